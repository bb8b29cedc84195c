"""What apps see: cluster DNS names for the Services (real CoreDNS), and sidecar agents that feed
Envoy from the EndpointSlices while making no ModelArts calls at all."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype
import pytest
import requests
import yaml

from agent.cli.sidecar_cmd import load_sidecar_config
from tests.envoy.harness import EnvoyProcess, send_requests, write_bootstrap
from tests.kube.conftest import (
    Agents,
    Cluster,
    manifests,
    mas,
    modelarts_calls,
    password_secret,
    vpc_addresses,
    wait_until,
)
from tests.kubeenv import free_port

pytestmark = pytest.mark.kube

SPACING = 62.0 / 20


def resolve(server: tuple[str, int], name: str) -> list[str]:
    answer = dns.query.udp(dns.message.make_query(name, dns.rdatatype.A), server[0], port=server[1], timeout=3)
    return sorted(item.address for rrset in answer.answer if rrset.rdtype == dns.rdatatype.A for item in rrset)


def test_dns_names_resolve_to_instances_or_the_service_ip(cluster: Cluster, namespace: str, agents: Agents,
                                                          emulators) -> None:  # type: ignore[no-untyped-def]
    server = cluster.env.start_coredns()
    emu = emulators([
        {"name": "hl", "service_id": "svc-hl", "instances": 3, "port": 8080, "bind_addresses": vpc_addresses(81, 3)},
        {"name": "cip", "service_id": "svc-cip", "instances": 2, "port": 8080, "bind_addresses": vpc_addresses(91, 2)},
    ])
    agents.controller("c1", namespace)
    cluster.apply(password_secret(namespace, "creds"),
                  mas(namespace, "hl", emu, "svc-hl", "creds", serviceType="Headless"),
                  mas(namespace, "cip", emu, "svc-cip", "creds"))
    headless = f"hl.{namespace}.svc.cluster.local."
    wait_until(lambda: resolve(server, headless) == vpc_addresses(81, 3), 25, f"{headless} -> the 3 instance IPs")
    cluster_ip = cluster.get_json("service", "cip", "-n", namespace)["spec"]["clusterIP"]
    name = f"cip.{namespace}.svc.cluster.local."
    wait_until(lambda: resolve(server, name) == [cluster_ip], 10, f"{name} -> {cluster_ip}")
    # A scale-in reaches DNS too.
    emu.admin.scale("svc-hl", 1)
    wait_until(lambda: resolve(server, headless) == vpc_addresses(81, 1), 20, f"{headless} -> 1 instance IP")


def sidecar_config(path: Path, workdir: Path, service: str, listen_port: int) -> Path:
    path.write_text(yaml.safe_dump({
        "services": [{"name": service, "listen_port": listen_port}],
        "discovery": {"allowed_cidrs": ["192.168.205.0/24"]},
        "envoy": {"output_dir": str(workdir / "envoy"), "admin_port": free_port()},
        "admin": {"port": 0},
    }))
    return path


def metric_total(port: int, name: str) -> float:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=3).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def test_sidecars_feed_envoy_and_cost_modelarts_nothing(cluster: Cluster, namespace: str, agents: Agents,
                                                        emulators, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    emu = emulators([{"name": "chat", "service_id": "svc-chat", "instances": 3, "port": 8080,
                      "bind_addresses": vpc_addresses(61, 6)}])
    cluster.apply(*manifests("sidecar.yaml", namespace))
    sidecar_kubeconfig = cluster.sa_kubeconfig(namespace, "modelarts-sidecar")
    controller = agents.controller("c1", namespace)
    cluster.apply(password_secret(namespace, "creds"), mas(namespace, "chat", emu, "svc-chat", "creds"))

    sidecars: list[tuple[Any, Path, int]] = []
    for i in range(3):
        workdir = tmp_path / f"pod-{i}"
        workdir.mkdir()
        listen = free_port()
        config = sidecar_config(workdir / "agent.yaml", workdir, "chat", listen)
        admin = free_port()
        sidecars.append((agents.sidecar(f"s{i}", config, "chat", namespace, sidecar_kubeconfig, admin), config,
                         listen))

    def instance_ids() -> set[str]:
        return {i.instance_id for i in emu.admin.instances("svc-chat") if i.listed}

    def all_sidecars_see(count: int) -> bool:
        return all(len(p.status()["services"][0]["endpoints"]) == count for p, _, _ in sidecars)

    wait_until(lambda: all_sidecars_see(3), 25, "every sidecar to see the 3 instances")

    # A real Envoy fed by the first sidecar's files: traffic reaches the instances on 192.168.205.x.
    _, config_path, listen = sidecars[0]
    config = load_sidecar_config(config_path, ["chat"])
    bootstrap = write_bootstrap(config, tmp_path / "bootstrap.yaml")
    envoy = EnvoyProcess(bootstrap, config.envoy.admin_port, tmp_path).start()
    try:
        wait_until(lambda: set(send_requests(listen, 30, 3).answered) == instance_ids(), 15,
                   "Envoy to spread requests over the 3 instances")
        hosts = envoy.hosts()
        assert {h.split(":")[0] for h in next(iter(hosts.values()))} <= set(vpc_addresses(61, 6)), hosts

        emu.admin.scale("svc-chat", 4)
        wait_until(lambda: all_sidecars_see(4), 20, "every sidecar to see the 4th instance")
        wait_until(lambda: set(send_requests(listen, 40, 4).answered) == instance_ids(), 10,
                   "traffic to reach the new instance")

        # The whole fleet polls like one agent: at most one call per pacing interval.
        window_start = emu.admin.now()
        time.sleep(3 * SPACING)
        calls = [c for c in modelarts_calls(emu) if c.time >= window_start]
        assert 1 <= len(calls) <= 4, calls
        for sidecar, _, _ in sidecars:
            assert metric_total(sidecar.admin_port, "modelarts_agent_discovery_calls_total") == 0

        # Without the controller, the three sidecars make no call at all, and Envoy keeps serving.
        controller.stop(signal.SIGTERM)
        quiet_from = emu.admin.now()
        time.sleep(2 * SPACING)
        assert [c for c in modelarts_calls(emu) if c.time >= quiet_from] == []
        assert [c for c in emu.admin.calls(api="iam") if c.time >= quiet_from] == []
        result = send_requests(listen, 20, 2)
        assert result.statuses == {200: 20} and set(result.answered) <= instance_ids()
        assert all(p.alive() for p, _, _ in sidecars)
    finally:
        envoy.stop()


def test_the_crs_load_balancing_reaches_the_sidecars_envoy(cluster: Cluster, namespace: str, agents: Agents,
                                                           emulators, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """spec.loadBalancing end to end: CR (ring_hash on x-user) -> controller's slice annotation -> sidecar ->
    a real Envoy that sends every request of one user to one instance, and different users to several."""
    emu = emulators([{"name": "lb", "service_id": "svc-lb", "instances": 4, "port": 8080,
                      "bind_addresses": vpc_addresses(91, 4)}])
    cluster.apply(*manifests("sidecar.yaml", namespace))
    sidecar_kubeconfig = cluster.sa_kubeconfig(namespace, "modelarts-sidecar")
    agents.controller("lb", namespace)
    cluster.apply(password_secret(namespace, "creds"),
                  mas(namespace, "lb", emu, "svc-lb", "creds",
                      loadBalancing={"policy": "ring_hash", "hashHeader": "x-user"}))
    listen = free_port()
    config_path = sidecar_config(tmp_path / "agent.yaml", tmp_path, "lb", listen)  # no lb of its own
    sidecar = agents.sidecar("lb", config_path, "lb", namespace, sidecar_kubeconfig, free_port())
    wait_until(lambda: len(sidecar.status()["services"][0]["endpoints"]) == 4, 30, "the sidecar to see 4 instances")
    config = load_sidecar_config(config_path, ["lb"])
    envoy = EnvoyProcess(write_bootstrap(config, tmp_path / "bootstrap.yaml"), config.envoy.admin_port,
                         tmp_path).start()
    try:
        wait_until(lambda: send_requests(listen, 4, 1).statuses == {200: 4}, 20, "Envoy to serve the service")
        for user in ("alice", "bob", "carol"):
            sticky = send_requests(listen, 20, 4, headers={"x-user": user})
            assert sticky.statuses == {200: 20} and len(set(sticky.answered)) == 1, (user, sticky.answered)
        spread = send_requests(listen, 60, 4, headers_for=lambda i: {"x-user": f"user-{i}"})
        assert spread.statuses == {200: 60} and len(set(spread.answered)) >= 3, spread.answered
        clusters = requests.get(f"http://127.0.0.1:{config.envoy.admin_port}/config_dump?resource=dynamic_active_clusters",
                                timeout=5).text
        assert "envoy.load_balancing_policies.ring_hash" in clusters
    finally:
        envoy.stop()
