"""Pod Security "restricted": the controller, the gateway and an injected app pod all run in
namespaces that enforce it, and the same namespaces refuse a pod that breaks it."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import APPS_NS, IMAGE, SYSTEM_NS, Kube, KubectlError


def test_controller_gateway_and_injected_pods_run_under_restricted(kube: Kube, release: str) -> None:
    for ns in (SYSTEM_NS, APPS_NS):
        labels = kube.get_json("namespace", ns)["metadata"]["labels"]
        assert labels.get("pod-security.kubernetes.io/enforce") == "restricted", labels
    assert len(kube.wait_ready(SYSTEM_NS, "app.kubernetes.io/component=controller", 2)) == 2
    assert kube.wait_ready(SYSTEM_NS, "app.kubernetes.io/component=gateway", 1)
    injected = kube.pods(APPS_NS, "app=injected")
    assert injected and injected[0]["status"]["phase"] == "Running", "the injected app pod (test_injected_sidecar)"

    privileged = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "not-restricted", "namespace": APPS_NS},
                  "spec": {"containers": [{"name": "c", "image": IMAGE, "securityContext": {"privileged": True}}]}}
    with pytest.raises(KubectlError) as refused:
        kube.apply(privileged)
    assert "violates PodSecurity" in str(refused.value) and "restricted" in str(refused.value)
