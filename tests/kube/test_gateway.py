"""Gateway mode in Kubernetes, as the chart runs it: the controller (leader) writes EndpointSlices; a
gateway agent (`sidecar` with the xDS sink on loopback, Envoy files off) follows them and feeds a
real Envoy over ADS (`render bootstrap --ads 127.0.0.1:<port> --gateway`). Requests pick a service
by Host or by path prefix and reach the emulator's instances on 192.168.205.x; the gateway agent
makes no ModelArts call at all."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from modelarts_emulator import Emulator

from tests.adaptive.test_envoy_adaptive import envoy_weights
from tests.envoy.harness import EnvoyProcess, require_envoy, send_requests
from tests.kube.conftest import (
    REPO,
    AgentProcess,
    Agents,
    Cluster,
    manifests,
    mas,
    modelarts_calls,
    password_secret,
    vpc_addresses,
    wait_until,
)
from tests.kube.test_dns_and_sidecars import SPACING, metric_total
from tests.kubeenv import free_port

pytestmark = pytest.mark.kube


def gateway_config(path: Path, services: list[str], xds_port: int, listen_port: int, envoy_admin_port: int) -> Path:
    """What the chart's gateway ConfigMap holds: the followed services, xDS on loopback, no files."""
    path.write_text(yaml.safe_dump({
        "services": [{"name": name} for name in services],
        "discovery": {"allowed_cidrs": ["192.168.205.0/24"]},
        "envoy": {"files": False, "output_dir": str(path.parent / "unused-envoy"), "admin_port": envoy_admin_port},
        "xds": {"enabled": True, "address": "127.0.0.1", "port": xds_port},
        "gateway": {"listen_address": "127.0.0.1", "listen_port": listen_port},
        "admin": {"port": 0},
    }))
    return path


def gateway_envoy(tmp_path: Path, xds_port: int, admin_port: int) -> EnvoyProcess:
    """The gateway pod's init container + Envoy: the bootstrap comes from the real CLI."""
    bootstrap = tmp_path / "bootstrap.yaml"
    subprocess.run([sys.executable, "-m", "agent", "render", "bootstrap", f"--ads=127.0.0.1:{xds_port}", "--gateway",
                    "--node-id=modelarts-gateway-0", f"--admin-port={admin_port}", f"--output={bootstrap}"],
                   cwd=REPO, check=True, capture_output=True, text=True)
    assert yaml.safe_load(bootstrap.read_text())["node"]["metadata"] == {"modelarts.role": "gateway"}
    return EnvoyProcess(bootstrap, admin_port, tmp_path).start()


def answered_by(emu: Emulator, service_id: str) -> set[str]:
    return {i.instance_id for i in emu.admin.instances(service_id) if i.listed}


def test_gateway_agent_feeds_envoy_over_ads_from_the_endpointslices(
        cluster: Cluster, namespace: str, agents: Agents, emulators, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    require_envoy()
    emu = emulators([
        {"name": "chat", "service_id": "svc-chat", "instances": 2, "port": 8080,
         "bind_addresses": vpc_addresses(111, 5)},
        {"name": "embed", "service_id": "svc-embed", "instances": 2, "port": 8080,
         "bind_addresses": vpc_addresses(121, 3)},
    ])
    # The gateway's ServiceAccount: get/list/watch EndpointSlices in its namespace, nothing else.
    cluster.apply(*manifests("sidecar.yaml", namespace))
    gateway_kubeconfig = cluster.sa_kubeconfig(namespace, "modelarts-sidecar")
    controller = agents.controller("c1", namespace)
    cluster.apply(password_secret(namespace, "creds"), mas(namespace, "chat", emu, "svc-chat", "creds"),
                  mas(namespace, "embed", emu, "svc-embed", "creds"))

    xds_port, listen_port, admin_port, envoy_admin_port = free_port(), free_port(), free_port(), free_port()
    config = gateway_config(tmp_path / "gateway.yaml", ["chat", "embed"], xds_port, listen_port, envoy_admin_port)
    gateway = AgentProcess(["sidecar", "--config", str(config), "--namespace", namespace,
                            "--kubeconfig", str(gateway_kubeconfig), "--admin-port", str(admin_port)],
                           tmp_path / "gateway-agent.log", admin_port)
    agents.started.append(gateway)

    def endpoints() -> dict[str, int]:
        return {s["name"]: len(s["endpoints"]) for s in gateway.status()["services"]}

    wait_until(lambda: endpoints() == {"chat": 2, "embed": 2}, 30, "the gateway agent to see 2 + 2 instances")
    status = gateway.status()
    assert status["xds"]["address"] == "127.0.0.1" and status["xds"]["port"] == xds_port, status["xds"]
    assert status["xds"]["serving"] and status["xds"]["cache_version"] >= 1, status["xds"]
    assert [s["name"] for s in status["sinks"]] == ["xds"], status["sinks"]
    assert not (tmp_path / "unused-envoy").exists()  # envoy.files: false

    envoy = gateway_envoy(tmp_path, xds_port, envoy_admin_port)
    try:
        envoy.wait_for_listeners(["modelarts-gateway"], timeout=15)
        wait_until(lambda: gateway.status()["xds"]["streams"] == 1, 10, "Envoy's ADS stream at the gateway agent")

        # By Host (`<name>` and `<name>.<namespace>.svc...`) and by path prefix `/<name>/`.
        wait_until(lambda: set(send_requests(listen_port, 20, 2, headers={"Host": "chat"}).answered)
                   == answered_by(emu, "svc-chat"), 20, "Host: chat to reach both chat instances")
        qualified = send_requests(listen_port, 10, 2, headers={"Host": f"chat.{namespace}.svc.cluster.local"})
        assert qualified.statuses == {200: 10} and set(qualified.answered) <= answered_by(emu, "svc-chat")
        wait_until(lambda: set(send_requests(listen_port, 20, 2, path="/embed/v1/predict",
                                             headers={"Host": "modelarts-gateway"}).answered)
                   == answered_by(emu, "svc-embed"), 20, "/embed/... to reach both embed instances")
        hosts = envoy.hosts()  # the services' clusters, plus modelarts_xds (the local agent)
        assert hosts["modelarts_xds"] == {f"127.0.0.1:{xds_port}"}, hosts
        assert {h.split(":")[0] for h in hosts["chat"]} <= set(vpc_addresses(111, 5)), hosts
        assert {h.split(":")[0] for h in hosts["embed"]} <= set(vpc_addresses(121, 3)), hosts
        assert send_requests(listen_port, 2, 1, path="/nothing/here",
                             headers={"Host": "modelarts-gateway"}).statuses == {404: 2}

        # Scaling ModelArts reaches Envoy: controller -> EndpointSlices -> gateway agent -> ADS.
        emu.admin.scale("svc-chat", 4)
        wait_until(lambda: endpoints()["chat"] == 4, 25, "the gateway agent to see 4 chat instances")
        wait_until(lambda: set(send_requests(listen_port, 40, 4, headers={"Host": "chat"}).answered)
                   == answered_by(emu, "svc-chat"), 15, "traffic to reach all 4 chat instances")

        # Adaptive LB (on by default for http): the gateway agent reads its own Envoy's admin and serves
        # the weights over ADS; /status and Envoy agree on a weight for every chat instance.
        def weighted() -> bool:
            send_requests(listen_port, 20, 2, headers={"Host": "chat"})
            chat = next(s for s in gateway.status()["services"] if s["name"] == "chat")
            published = {row["address"]: row["weight"] for row in chat.get("weights") or []}
            return bool(published) and envoy_weights(envoy, "chat") == published \
                and set(published) == set(envoy.hosts()["chat"])

        wait_until(weighted, 30, "adaptive weights for every chat instance, in /status and in Envoy")
        emu.admin.scale("svc-embed", 1)
        wait_until(lambda: endpoints()["embed"] == 1, 25, "the gateway agent to see 1 embed instance")
        wait_until(lambda: len(envoy.hosts()["embed"]) == 1, 10,
                   "Envoy's embed cluster to shrink to 1 host")
        only = send_requests(listen_port, 10, 2, path="/embed/x", headers={"Host": "modelarts-gateway"})
        assert only.statuses == {200: 10} and set(only.answered) == answered_by(emu, "svc-embed")

        # The gateway agent never calls ModelArts: no discovery calls of its own, and with the
        # controller gone the emulator sees no call at all while the gateway keeps serving.
        assert metric_total(admin_port, "modelarts_agent_discovery_calls_total") == 0
        controller.stop(signal.SIGTERM)
        quiet_from = emu.admin.now()
        time.sleep(2 * SPACING)
        assert [c for c in modelarts_calls(emu) if c.time >= quiet_from] == []
        assert [c for c in emu.admin.calls(api="iam") if c.time >= quiet_from] == []
        result = send_requests(listen_port, 20, 2, headers={"Host": "chat"})
        assert result.statuses == {200: 20} and set(result.answered) <= answered_by(emu, "svc-chat")
        assert gateway.alive()
        assert "Traceback" not in gateway.log(), gateway.log()[-3000:]
    finally:
        envoy.stop()
    # SIGTERM: the agent closes its xDS server and exits cleanly.
    assert gateway.stop() == 0
