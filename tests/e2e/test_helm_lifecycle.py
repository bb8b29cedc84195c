"""`helm install`, `helm upgrade` and `helm uninstall` of a second release: the upgrade rolls the
controller with the new values, and the uninstall leaves nothing but what Helm's convention keeps
(the CRD, from the chart's crds/ folder)."""

from __future__ import annotations

import json

from tests.e2e.conftest import Kube, chart_values, helm_install, wait_until

NS = "lc-system"
RELEASE = "lc"
KINDS = ("deployments", "replicasets", "pods", "services", "serviceaccounts", "configmaps", "secrets", "roles",
         "rolebindings", "poddisruptionbudgets", "networkpolicies")
CLUSTER_KINDS = ("clusterroles", "clusterrolebindings")


def release_objects(kube: Kube) -> list[str]:
    selector = f"app.kubernetes.io/instance={RELEASE}"
    found = []
    for kind in KINDS:
        out = kube.kubectl("get", kind, "-n", NS, "-l", selector, "-o", "name").stdout.split()
        found += out
    for kind in CLUSTER_KINDS:
        found += kube.kubectl("get", kind, "-l", selector, "-o", "name").stdout.split()
    return found


def test_install_upgrade_uninstall_leaves_only_the_crd(kube: Kube, release: str) -> None:
    kube.namespace(NS)
    # It watches a namespace with no ModelArtsServices, so it never competes with the main release.
    # Objects outside its namespace (the app namespaces' sidecar accounts, the credentials bindings)
    # belong to the main release; a second release must not claim them.
    values = chart_values(replicaCount=1, controller={"watchNamespace": "lc-nothing-here"},
                          podDisruptionBudget={"enabled": False}, sidecar={"namespaces": []},
                          rbac={"credentialsNamespaces": []})
    helm_install(kube, RELEASE, NS, values)
    selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=controller"
    kube.wait_ready(NS, selector, 1)
    assert release_objects(kube)

    values["controller"] = {**values["controller"], "logLevel": "debug"}
    values["replicaCount"] = 2
    helm_install(kube, RELEASE, NS, values, upgrade=True)
    pods = kube.wait_ready(NS, selector, 2)
    for pod in pods:
        args = kube.get_json("pod", "-n", NS, pod)["spec"]["containers"][0]["args"]
        assert "--log-level=debug" in args, args
    history = json.loads(kube.helm("history", RELEASE, "-n", NS, "-o", "json").stdout)
    assert [h["revision"] for h in history] == [1, 2] and history[-1]["status"] == "deployed", history

    kube.helm("uninstall", RELEASE, "-n", NS, "--wait", "--timeout", "120s")
    wait_until(lambda: release_objects(kube) == [], 60, "every object of the release to be gone")
    assert kube.helm("status", RELEASE, "-n", NS, check=False).returncode != 0
    # Helm never deletes CRDs from crds/ (their objects would go with them): the main release still needs it.
    kube.kubectl("get", "crd", "modelartsservices.vpc.modelarts.io")
