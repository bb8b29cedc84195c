"""What the apiserver refuses before the controller sees anything: invalid CRs at admission, and
everything outside the ServiceAccounts' RBAC (checked with `kubectl auth can-i --as`)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from tests.kube.conftest import CONTROLLER_SA, LEASE, SYSTEM_NS, Cluster, manifests, unique

pytestmark = pytest.mark.kube

GOOD_SPEC: dict[str, Any] = {"projectId": "p1", "serviceId": "svc-1", "modelartsUrl": "https://modelarts.example.com",
                             "iamUrl": "https://iam.example.com", "credentialsSecretRef": {"name": "creds"}}


@pytest.mark.parametrize(("change", "message"), [
    ({"allowedCIDRs": ["not-a-cidr"]}, "every allowedCIDRs entry must be a CIDR such as 192.168.0.0/16"),
    ({"loadBalancing": {"policy": "ring_hash"}}, "ring_hash and maglev need hashHeader"),
    ({"serviceId": "bad id!"}, "spec.serviceId in body should match"),
    ({"modelartsUrl": "ftp://x/path"}, "spec.modelartsUrl in body should match"),
    ({"pollInterval": "soon"}, "spec.pollInterval in body should match"),
    ({"credentialsSecretRef": None}, "spec.credentialsSecretRef: Required value"),
], ids=["cidr", "ring-hash", "service-id", "url", "interval", "secret-ref"])
def test_invalid_cr_is_rejected_at_admission(cluster: Cluster, change: dict[str, Any], message: str) -> None:
    spec = copy.deepcopy(GOOD_SPEC)
    for key, value in change.items():
        if value is None:
            spec.pop(key)
        else:
            spec[key] = value
    cr = {"apiVersion": "vpc.modelarts.io/v1alpha1", "kind": "ModelArtsService",
          "metadata": {"name": unique("bad"), "namespace": "default"}, "spec": spec}
    # --validate=false: kubectl's own schema check is skipped, so the refusal is the apiserver's admission.
    proc = cluster.kubectl("apply", "--validate=false", "-f", "-", input=json.dumps(cr), check=False)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
    # A good one goes through (so the failures above are about the change, nothing else), dry-run only.
    cr["spec"] = GOOD_SPEC
    ok = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(cr), check=False)
    assert ok.returncode == 0, ok.stderr


def can_i(cluster: Cluster, user: str, verb: str, resource: str, namespace: str | None, *extra: str) -> bool:
    scope = ["-n", namespace] if namespace else ["--all-namespaces"]
    proc = cluster.kubectl("auth", "can-i", verb, resource, *scope, *extra, f"--as={user}", check=False)
    answer = proc.stdout.strip()
    assert answer in ("yes", "no"), proc.stderr
    return answer == "yes"


def test_controller_rbac_allows_only_what_it_needs(cluster: Cluster, namespace: str) -> None:
    sa = f"system:serviceaccount:{SYSTEM_NS}:{CONTROLLER_SA}"
    other = unique("unbound")
    cluster.kubectl("create", "namespace", other)
    allowed = [
        ("list", "modelartsservices.vpc.modelarts.io", None), ("watch", "modelartsservices.vpc.modelarts.io", None),
        ("patch", "modelartsservices.vpc.modelarts.io", namespace, "--subresource=status"),
        ("get", "services", namespace), ("create", "services", namespace), ("patch", "services", namespace),
        ("create", "endpointslices.discovery.k8s.io", namespace), ("patch", "endpointslices.discovery.k8s.io", other),
        ("delete", "endpointslices.discovery.k8s.io", namespace), ("create", "events", namespace),
        # Secrets: get, in its own namespace and in namespaces that bound the credentials reader.
        ("get", "secrets", SYSTEM_NS), ("get", "secrets", namespace),
        ("get", f"leases.coordination.k8s.io/{LEASE}", SYSTEM_NS),
        ("update", f"leases.coordination.k8s.io/{LEASE}", SYSTEM_NS),
        ("create", "leases.coordination.k8s.io", SYSTEM_NS),
    ]
    denied = [
        # Secrets elsewhere, and no enumeration of Secrets anywhere.
        ("get", "secrets", other), ("get", "secrets", "kube-system"), ("list", "secrets", SYSTEM_NS),
        ("watch", "secrets", namespace), ("list", "secrets", None),
        # Never deletes or rewrites Services (the garbage collector removes ours), never touches CR specs.
        ("delete", "services", namespace), ("update", "services", namespace),
        ("create", "modelartsservices.vpc.modelarts.io", namespace),
        ("patch", "modelartsservices.vpc.modelarts.io", namespace),
        ("delete", "modelartsservices.vpc.modelarts.io", namespace),
        # Only its own Lease, only in its own namespace.
        ("update", "leases.coordination.k8s.io/someone-elses-lease", SYSTEM_NS),
        ("get", "leases.coordination.k8s.io", "kube-system"),
        # Nothing else.
        ("create", "endpoints", namespace), ("create", "pods", namespace), ("get", "configmaps", namespace),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io", None), ("list", "nodes", None),
        ("create", "serviceaccounts/token", SYSTEM_NS),
    ]
    wrong = [c for c in allowed if not can_i(cluster, sa, *c)] + [c for c in denied if can_i(cluster, sa, *c)]
    assert not wrong, f"RBAC answers differ from the documented boundaries: {wrong}"


def test_sidecar_rbac_reads_only_endpointslices(cluster: Cluster, namespace: str) -> None:
    cluster.apply(*manifests("sidecar.yaml", namespace))
    sa = f"system:serviceaccount:{namespace}:modelarts-sidecar"
    allowed = [("get", "endpointslices.discovery.k8s.io"), ("list", "endpointslices.discovery.k8s.io"),
               ("watch", "endpointslices.discovery.k8s.io")]
    denied = [("create", "endpointslices.discovery.k8s.io"), ("patch", "endpointslices.discovery.k8s.io"),
              ("get", "secrets"), ("get", "modelartsservices.vpc.modelarts.io"), ("get", "services"),
              ("list", "pods")]
    wrong = [c for c in allowed if not can_i(cluster, sa, *c, namespace)]
    wrong += [c for c in denied if can_i(cluster, sa, *c, namespace)]
    wrong += [("list", "endpointslices", "kube-system")] if can_i(
        cluster, sa, "list", "endpointslices.discovery.k8s.io", "kube-system") else []
    assert not wrong, f"sidecar RBAC answers differ from the documented boundaries: {wrong}"
