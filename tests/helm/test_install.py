"""Against a real kube-apiserver (tests/kubeenv.py): `helm install` with every feature on, the plain
manifests with `kubectl apply -k`, and Pod Security Admission "restricted" on the pods the chart and
`inject` produce. (No kubelet or scheduler runs here: Pods are admitted and stored, never started.)"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from agent.inject.injector import inject_text
from agent.inject.model import InjectOptions
from tests.helm.conftest import APP, CHART, REPO, VALUES_ALL, Helm
from tests.kubeenv import KubeTestEnv

pytestmark = pytest.mark.kube

RELEASE = "mas-test"
RELEASE_NS = "mas-system"
FULLNAME = f"{RELEASE}-modelarts-agent"
RESTRICTED_NS = "psa-restricted"
REFUSED = 'violates PodSecurity "restricted:latest"'

# Stand-ins for the Prometheus Operator CRDs, so the ServiceMonitor and PrometheusRule can be stored
# (the real CRDs' schemas are not checked here).
MONITORING_CRDS = [
    {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
     "metadata": {"name": f"{plural}.monitoring.coreos.com"},
     "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
              "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
              "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                  "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}}
    for kind, plural in (("ServiceMonitor", "servicemonitors"), ("PrometheusRule", "prometheusrules"))
]


def apply(env: KubeTestEnv, *objects: dict[str, Any]) -> None:
    env.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}))


def names(env: KubeTestEnv, resource: str, *args: str) -> set[str]:
    out = env.kubectl("get", resource, *args, "-o", "jsonpath={.items[*].metadata.name}").stdout
    return set(out.split())


@pytest.fixture(scope="module")
def installed(kube_env: KubeTestEnv) -> Iterator[str]:
    apply(kube_env, *MONITORING_CRDS)
    kube_env.kubectl("wait", "--for=condition=Established", "--timeout=30s",
                     *(f"crd/{c['metadata']['name']}" for c in MONITORING_CRDS))
    kube_env.kubectl("create", "namespace", "team-a")
    proc = kube_env.helm("install", RELEASE, str(CHART), "--namespace", RELEASE_NS, "--create-namespace",
                         "-f", str(VALUES_ALL))
    yield proc.stdout
    kube_env.helm("uninstall", RELEASE, "--namespace", RELEASE_NS, check=False)


def test_helm_install_creates_every_object(kube_env: KubeTestEnv, installed: str) -> None:
    ns = ["-n", RELEASE_NS]
    assert names(kube_env, "deployments", *ns) == {FULLNAME, "modelarts-gateway"}
    assert names(kube_env, "serviceaccounts", *ns) >= {FULLNAME}
    assert names(kube_env, "services", *ns) == {f"{FULLNAME}-metrics", "modelarts-gateway"}
    assert names(kube_env, "poddisruptionbudgets", *ns) == {FULLNAME, "modelarts-gateway"}
    assert names(kube_env, "networkpolicies", *ns) == {FULLNAME}
    assert names(kube_env, "secrets", *ns) >= {f"{FULLNAME}-credentials"}
    assert names(kube_env, "configmaps", *ns) >= {f"{FULLNAME}-dashboard", "modelarts-gateway-config"}
    assert names(kube_env, "servicemonitors", *ns) == {FULLNAME, "modelarts-gateway"}
    assert names(kube_env, "prometheusrules", *ns) == {FULLNAME}
    assert names(kube_env, "roles", *ns) == {f"{FULLNAME}-leader-election", "modelarts-gateway"}
    assert names(kube_env, "serviceaccounts", *ns) >= {FULLNAME, "modelarts-gateway"}
    assert names(kube_env, "rolebindings", "-n", "team-a") == {f"{FULLNAME}-credentials-reader", "modelarts-sidecar"}
    roles = {f"{FULLNAME}-controller", f"{FULLNAME}-credentials-reader", f"{FULLNAME}-legacy-endpoints"}
    assert roles <= names(kube_env, "clusterroles")
    assert {f"{FULLNAME}-controller", f"{FULLNAME}-legacy-endpoints"} <= names(kube_env, "clusterrolebindings")
    # The CRD came from crds/, and the GitOps ModelArtsServices were admitted by its schema.
    kube_env.kubectl("get", "crd", "modelartsservices.vpc.modelarts.io")
    mas = kube_env.kubectl("get", "mas", "-A", "-o", "json").stdout
    assert {(i["metadata"]["namespace"], i["metadata"]["name"]) for i in json.loads(mas)["items"]} == \
        {(RELEASE_NS, "llm"), ("team-a", "embeddings")}
    # NOTES.txt: how to see what got synced.
    for command in ("kubectl get mas -A",
                    "kubectl get endpointslices -A -l endpointslice.kubernetes.io/managed-by=modelarts-agent",
                    f"kubectl describe mas llm -n {RELEASE_NS}", "kubectl describe mas embeddings -n team-a"):
        assert command in installed, installed


def test_chart_rbac_grants_what_the_controller_needs_and_no_more(kube_env: KubeTestEnv, installed: str) -> None:
    sa = f"system:serviceaccount:{RELEASE_NS}:{FULLNAME}"

    def can(verb: str, resource: str, namespace: str) -> bool:
        proc = kube_env.kubectl("auth", "can-i", verb, resource, "-n", namespace, f"--as={sa}", check=False)
        return proc.stdout.strip() == "yes"

    assert can("get", "secrets", "team-a") and can("get", "secrets", RELEASE_NS)
    assert not can("get", "secrets", "default") and not can("list", "secrets", "team-a")
    assert can("update", f"leases.coordination.k8s.io/{FULLNAME}-controller", RELEASE_NS)
    assert not can("update", "leases.coordination.k8s.io/other", RELEASE_NS)
    assert can("patch", "endpointslices.discovery.k8s.io", "default")
    assert not can("delete", "services", "default")


def test_sidecar_service_account_reads_only_endpointslices(kube_env: KubeTestEnv, installed: str) -> None:
    sa = "system:serviceaccount:team-a:modelarts-sidecar"

    def can(verb: str, resource: str, namespace: str) -> bool:
        proc = kube_env.kubectl("auth", "can-i", verb, resource, "-n", namespace, f"--as={sa}", check=False)
        return proc.stdout.strip() == "yes"

    assert can("watch", "endpointslices.discovery.k8s.io", "team-a")
    assert not can("list", "endpointslices.discovery.k8s.io", "default")
    assert not can("get", "secrets", "team-a") and not can("patch", "endpointslices.discovery.k8s.io", "team-a")


def test_gateway_service_account_reads_only_endpointslices_of_the_release_namespace(
        kube_env: KubeTestEnv, installed: str) -> None:
    sa = f"system:serviceaccount:{RELEASE_NS}:modelarts-gateway"

    def can(verb: str, resource: str, namespace: str) -> bool:
        proc = kube_env.kubectl("auth", "can-i", verb, resource, "-n", namespace, f"--as={sa}", check=False)
        return proc.stdout.strip() == "yes"

    assert can("get", "endpointslices.discovery.k8s.io", RELEASE_NS)
    assert can("list", "endpointslices.discovery.k8s.io", RELEASE_NS)
    assert can("watch", "endpointslices.discovery.k8s.io", RELEASE_NS)
    assert not can("list", "endpointslices.discovery.k8s.io", "team-a")
    assert not can("get", "secrets", RELEASE_NS) and not can("patch", "endpointslices.discovery.k8s.io", RELEASE_NS)
    assert not can("get", "modelartsservices.vpc.modelarts.io", RELEASE_NS)


def test_plain_manifests_apply(kube_env: KubeTestEnv) -> None:
    kube_env.kubectl("apply", "-k", str(REPO / "manifests"))
    assert names(kube_env, "deployments", "-n", "modelarts-system") == {"modelarts-agent"}
    labels = json.loads(kube_env.kubectl("get", "namespace", "modelarts-system", "-o", "json").stdout)
    assert labels["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# --- Pod Security Admission "restricted" ------------------------------------------------------------


@pytest.fixture(scope="module")
def restricted_ns(kube_env: KubeTestEnv) -> str:
    kube_env.kubectl("create", "namespace", RESTRICTED_NS)
    kube_env.kubectl("label", "namespace", RESTRICTED_NS, "pod-security.kubernetes.io/enforce=restricted",
                     "pod-security.kubernetes.io/enforce-version=latest")
    return RESTRICTED_NS


def pod_from_template(name: str, template: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": RESTRICTED_NS,
                         "annotations": template.get("metadata", {}).get("annotations", {})},
            "spec": copy.deepcopy(template["spec"])}


def chart_pods(helm: Helm) -> dict[str, dict[str, Any]]:
    objects = helm.objects("-f", VALUES_ALL)
    return {o["metadata"]["name"]: pod_from_template(o["metadata"]["name"], o["spec"]["template"])
            for o in objects if o["kind"] == "Deployment"}


def injected_app_pod() -> dict[str, Any]:
    out = inject_text(APP.read_text(), InjectOptions(services=(("llm", 10080),))).text
    deploy = next(d for d in yaml.safe_load_all(out) if d and d["kind"] == "Deployment")
    return pod_from_template("injected-app", deploy["spec"]["template"])


def create(env: KubeTestEnv, pod: dict[str, Any]) -> tuple[bool, str]:
    account = pod["spec"].get("serviceAccountName")
    if account:
        env.kubectl("create", "serviceaccount", account, "-n", RESTRICTED_NS, check=False)
    proc = env.kubectl("create", "-f", "-", input=json.dumps(pod), check=False)
    return proc.returncode == 0, proc.stderr


def test_chart_and_injected_pods_are_admitted_as_restricted(kube_env: KubeTestEnv, helm: Helm,
                                                            restricted_ns: str) -> None:
    pods = {**chart_pods(helm), "injected-app": injected_app_pod()}
    assert set(pods) == {"modelarts-agent", "modelarts-gateway", "injected-app"}
    for name, pod in pods.items():
        ok, err = create(kube_env, pod)
        assert ok, f"{name} was refused: {err}"
    assert names(kube_env, "pods", "-n", restricted_ns) == set(pods)


def test_unsafe_variants_are_refused(kube_env: KubeTestEnv, helm: Helm, restricted_ns: str) -> None:
    """The check above can fail: the same pods, each made unsafe in one way, are refused."""
    controller = chart_pods(helm)["modelarts-agent"]
    controller["metadata"]["name"] = "unsafe-controller"
    controller["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    ok, err = create(kube_env, controller)
    assert not ok and REFUSED in err and "allowPrivilegeEscalation != false" in err, err

    app = injected_app_pod()
    app["metadata"]["name"] = "unsafe-injected-app"
    envoy = next(c for c in app["spec"]["initContainers"] if c["name"] == "modelarts-envoy")
    del envoy["securityContext"]["capabilities"]
    ok, err = create(kube_env, app)
    assert not ok and REFUSED in err and '"modelarts-envoy"' in err, err
