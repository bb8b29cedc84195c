"""The chart's gateway (`gateway.enabled`): Host and path routing to ModelArtsServices, from a pod."""

from __future__ import annotations

from tests.e2e.conftest import (
    APPS_NS,
    GATEWAY_URL,
    SYSTEM_NS,
    ClusterEmulator,
    Kube,
    app_pod,
    load,
    wait_until,
)


def test_gateway_routes_by_host_and_by_path(kube: Kube, emulator: ClusterEmulator, release: str) -> None:
    # gw-a and gw-b came with the release (the chart's modelArtsServices).
    assert {"gw-a", "gw-b"} <= set(kube.kubectl("get", "mas", "-n", SYSTEM_NS, "-o", "name").stdout.replace(
        "modelartsservice.vpc.modelarts.io/", "").split())
    a = {i["id"] for i in emulator.instances("svc-gw-a")}
    b = {i["id"] for i in emulator.instances("svc-gw-b")}
    kube.wait_ready(SYSTEM_NS, "app.kubernetes.io/component=gateway", 1, timeout=120)
    pod = app_pod(kube, "gateway-caller")
    by_host = wait_until(lambda: (r := load(kube, pod, GATEWAY_URL, seconds=2, workers=2,
                                            headers={"Host": "gw-a"})) and r["ok"] > 0 and r, 60,
                         "the gateway to route Host gw-a",
                         diagnostics=lambda: kube.describe_pods(SYSTEM_NS, "app.kubernetes.io/component=gateway"))
    assert by_host["failed"] == 0 and set(by_host["by_instance"]) == a, by_host
    by_path = wait_until(lambda: (r := load(kube, pod, GATEWAY_URL + "gw-b/predict", seconds=2, workers=2))
                         and r["ok"] > 0 and r, 60, "the gateway to route /gw-b/")
    assert by_path["failed"] == 0 and set(by_path["by_instance"]) == b, by_path
    # The app namespace's pods reach it through its Service name; the gateway holds no credentials.
    assert APPS_NS != SYSTEM_NS
    gateway_pods = kube.pods(SYSTEM_NS, "app.kubernetes.io/component=gateway")
    volumes = gateway_pods[0]["spec"].get("volumes", [])
    assert not [v for v in volumes if "secret" in v], volumes
