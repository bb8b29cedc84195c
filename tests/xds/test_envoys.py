"""Real Envoy 1.40 processes fed by the in-process ADS server, with real upstream instances.

Each test runs at least two Envoys at once (one state-of-the-world, one delta, unless stated), each
binding its listeners to its own loopback address through node metadata.
"""

from __future__ import annotations

import functools
import http.client
import json
import logging
import time
from pathlib import Path

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2

from agent.envoy.resources import EnvoyResources
from agent.metrics import REGISTRY
from agent.sinks.xds.types import CDS
from agent.sinks.xds.views import build_view
from tests.envoy.conftest import Instances
from tests.envoy.harness import EnvoyProcess, endpoint, free_port, make_snapshot, send_requests, wait_until
from tests.xds.conftest import StartAdsEnvoy, StartControlPlane, ads_address
from tests.xds.helpers import LoadLoop, xds_config
from tests.xds.pki import make_pki

pytestmark = pytest.mark.envoy

A, B = "127.0.1.1", "127.0.1.2"  # each Envoy's listen address (outside the instances' 127.0.0.x)
XDS_CLUSTER = "modelarts_xds"


def served(envoy: EnvoyProcess) -> set[str]:
    return set(envoy.hosts()) - {XDS_CLUSTER}


def connected(envoy: EnvoyProcess) -> int:
    return envoy.stats("control_plane.connected_state").get("control_plane.connected_state", -1)


def test_sotw_and_delta_envoys_route_and_follow_endpoint_changes(tmp_path: Path, instances: Instances,
                                                                 start_control_plane: StartControlPlane,
                                                                 start_ads_envoy: StartAdsEnvoy) -> None:
    port = free_port()
    config = xds_config(tmp_path, [{"name": "svc", "listen_port": port}])
    ups = [instances.http(f"i{n}") for n in range(3)]
    sink = start_control_plane(config)
    sink.publish(make_snapshot(config, {"svc": [endpoint(u) for u in ups[:2]]}))
    envoys = {A: start_ads_envoy(ads_address(config), listen_address=A),
              B: start_ads_envoy(ads_address(config), listen_address=B, delta=True)}
    for address, envoy in envoys.items():
        envoy.wait_for_hosts({"svc": [u.address for u in ups[:2]]})
        result = send_requests(port, 40, concurrency=4, host=address)
        assert result.failures == [] and set(result.answered) == {"i0", "i1"}, address

    sink.publish(make_snapshot(config, {"svc": [endpoint(u) for u in ups[1:]]}, version=2))
    for address, envoy in envoys.items():
        envoy.wait_for_hosts({"svc": [u.address for u in ups[1:]]}, timeout=10)
        result = send_requests(port, 40, concurrency=4, host=address)
        assert result.failures == [] and set(result.answered) == {"i1", "i2"}, address
        assert not any(envoy.rejected_updates().values())
        assert connected(envoy) == 1


def cds_nacks() -> float:
    return REGISTRY.get_sample_value("modelarts_agent_xds_nacks_total", {"type_url": CDS}) or 0.0


def _break_clusters(built: EnvoyResources, broken: dict[str, bool]) -> EnvoyResources:
    """A negative connect_timeout: valid protobuf, rejected by Envoy's validation (must be > 0s)."""
    if not broken["on"]:
        return built
    clusters = []
    for cluster in built.clusters:
        copy = type(cluster)()
        copy.CopyFrom(cluster)
        copy.connect_timeout.seconds = -1
        clusters.append(copy)
    return EnvoyResources(clusters=tuple(clusters), load_assignments=built.load_assignments,
                          listeners=built.listeners, routes=built.routes)


def test_rejected_cluster_is_nacked_logged_counted_and_traffic_keeps_flowing(
        tmp_path: Path, instances: Instances, start_control_plane: StartControlPlane,
        start_ads_envoy: StartAdsEnvoy, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="agent.sinks.xds")
    port = free_port()
    config = xds_config(tmp_path, [{"name": "svc", "listen_port": port}])
    ups = [instances.http(f"i{n}") for n in range(3)]
    broken = {"on": False}
    sink = start_control_plane(config, builder=functools.partial(build_view, transform=functools.partial(
        _break_clusters, broken=broken)))
    sink.publish(make_snapshot(config, {"svc": [endpoint(u) for u in ups[:2]]}))
    envoys = [start_ads_envoy(ads_address(config), listen_address=A),
              start_ads_envoy(ads_address(config), listen_address=B, delta=True)]
    for envoy in envoys:
        envoy.wait_for_hosts({"svc": [u.address for u in ups[:2]]})
    nacks_before = cds_nacks()

    with LoadLoop(port, A) as load_a, LoadLoop(port, B) as load_b:
        broken["on"] = True
        sink.publish(make_snapshot(config, {"svc": [endpoint(u) for u in ups]}, version=2))
        assert wait_until(lambda: all(e.stats("cds.update_rejected").get("cluster_manager.cds.update_rejected")
                                      for e in envoys), 15), [e.log_tail() for e in envoys]
        assert wait_until(lambda: cds_nacks() >= nacks_before + 2, 15)
        time.sleep(1.0)  # no re-send loop: each Envoy NACKs the bad version exactly once
        assert cds_nacks() == nacks_before + 2
        for envoy in envoys:  # the last good cluster is still the one in use
            dump = json.dumps(envoy.config_dump("dynamic_active_clusters"))
            assert '"connect_timeout": "2s"' in dump
        # Endpoint updates of the cluster Envoy kept still flow.
        for envoy in envoys:
            envoy.wait_for_hosts({"svc": [u.address for u in ups]}, timeout=10)
        time.sleep(0.5)
    for load in (load_a, load_b):
        assert load.result.attempts > 20 and load.result.failures == [], load.result.failures[:5]
    messages = [r.getMessage() for r in caplog.records if "NACK" in r.getMessage()]
    # Envoy's own error_detail is in the log line.
    assert len(messages) == 2 and all("Expected positive duration" in m for m in messages), messages

    broken["on"] = False  # fixed: accepted, and no further NACK
    sink.publish(make_snapshot(config, {"svc": [endpoint(u) for u in ups]}, version=3))
    for envoy in envoys:
        assert wait_until(lambda e=envoy: e.stats("cds.update_success").get(  # type: ignore[misc]
            "cluster_manager.cds.update_success", 0) >= 2, 15)
    assert cds_nacks() == nacks_before + 2


def test_node_metadata_selects_the_services_a_node_sees(tmp_path: Path, instances: Instances,
                                                        start_control_plane: StartControlPlane,
                                                        start_ads_envoy: StartAdsEnvoy) -> None:
    port_a, port_b = free_port(), free_port()
    config = xds_config(tmp_path, [{"name": "a", "listen_port": port_a}, {"name": "b", "listen_port": port_b}])
    up_a, up_b = instances.http("a0"), instances.http("b0")
    sink = start_control_plane(config)
    sink.publish(make_snapshot(config, {"a": [endpoint(up_a)], "b": [endpoint(up_b)]}))
    only_a = start_ads_envoy(ads_address(config), listen_address=A, services=("a",))
    both = start_ads_envoy(ads_address(config), listen_address=B, delta=True)
    only_a.wait_for_hosts({"a": [up_a.address]})
    both.wait_for_hosts({"a": [up_a.address], "b": [up_b.address]})
    assert served(only_a) == {"a"} and only_a.listeners() == {"a"}
    assert served(both) == {"a", "b"}
    assert set(send_requests(port_a, 5, host=A).answered) == {"a0"}
    with pytest.raises(OSError):  # no listener for b on the node that does not see b
        http.client.HTTPConnection(A, port_b, timeout=2).connect()
    assert set(send_requests(port_b, 5, host=B).answered) == {"b0"}


def _no_waiting(bootstrap: bootstrap_pb2.Bootstrap) -> None:
    # An Envoy that cannot reach the control plane would wait 15 s per resource type before serving
    # /ready; this one gives up at once so the test can look at it.
    for source in (bootstrap.dynamic_resources.cds_config, bootstrap.dynamic_resources.lds_config):
        source.initial_fetch_timeout.FromMilliseconds(500)


def test_mtls_envoy_with_client_cert_connects_without_is_refused(tmp_path: Path, instances: Instances,
                                                                 start_control_plane: StartControlPlane,
                                                                 start_ads_envoy: StartAdsEnvoy) -> None:
    pki = make_pki(tmp_path / "pki")
    port = free_port()
    config = xds_config(tmp_path, [{"name": "svc", "listen_port": port}], xds={"tls": {
        "cert_file": str(pki.server_cert), "key_file": str(pki.server_key), "client_ca_file": str(pki.ca)}})
    up = instances.http("i0")
    sink = start_control_plane(config)
    sink.publish(make_snapshot(config, {"svc": [endpoint(up)]}))
    address = ads_address(config)
    trusted = start_ads_envoy(address, listen_address=A, ca_file=pki.ca, cert_file=pki.client_cert,
                              key_file=pki.client_key)
    anonymous = start_ads_envoy(address, listen_address=B, delta=True, ca_file=pki.ca, tweak=_no_waiting)
    trusted.wait_for_hosts({"svc": [up.address]})
    assert set(send_requests(port, 5, host=A).answered) == {"i0"}
    assert connected(trusted) == 1
    time.sleep(1.0)
    assert connected(anonymous) == 0 and served(anonymous) == set()
    assert sink.server is not None and sink.server.stream_count == 1


def test_server_certificate_from_another_ca_is_refused(tmp_path: Path, start_control_plane: StartControlPlane,
                                                       start_ads_envoy: StartAdsEnvoy) -> None:
    pki = make_pki(tmp_path / "pki")
    config = xds_config(tmp_path, [{"name": "svc"}], xds={"tls": {
        "cert_file": str(pki.server_cert), "key_file": str(pki.server_key)}})
    start_control_plane(config).publish(make_snapshot(config, {}))
    envoy = start_ads_envoy(ads_address(config), ca_file=pki.other_ca, tweak=_no_waiting)
    time.sleep(1.0)
    assert connected(envoy) == 0 and served(envoy) == set()


def _get(host: str, port: int, path: str, host_header: str) -> tuple[int, dict[str, object]]:
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", path, headers={"Host": host_header})
        response = conn.getresponse()
        body = response.read()
        return response.status, json.loads(body) if body.startswith(b"{") else {}
    finally:
        conn.close()


def test_gateway_fleet_routes_by_host_and_by_path_prefix(tmp_path: Path, instances: Instances,
                                                          start_control_plane: StartControlPlane,
                                                          start_ads_envoy: StartAdsEnvoy) -> None:
    gateway_port = free_port()
    config = xds_config(tmp_path, [{"name": "llm", "retries": {"num_retries": 1}}, {"name": "embed"}],
                        gateway={"listen_port": gateway_port})
    llm = [instances.http(f"llm{n}") for n in range(2)]
    embed = [instances.http("embed0")]
    sink = start_control_plane(config)
    sink.publish(make_snapshot(config, {"llm": [endpoint(u) for u in llm], "embed": [endpoint(u) for u in embed]}))
    gateways = {A: start_ads_envoy(ads_address(config), role="gateway", listen_address=A),
                B: start_ads_envoy(ads_address(config), role="gateway", listen_address=B, delta=True)}
    for address, gateway in gateways.items():
        gateway.wait_for_hosts({"llm": [u.address for u in llm], "embed": [e.address for e in embed]})
        assert gateway.listeners() == {"modelarts-gateway"}
        by_host = send_requests(gateway_port, 20, host=address, headers={"Host": "llm"})
        assert by_host.failures == [] and set(by_host.answered) == {"llm0", "llm1"}
        qualified = send_requests(gateway_port, 5, host=address,
                                  headers={"Host": f"embed.models.svc.cluster.local:{gateway_port}"})
        assert qualified.failures == [] and set(qualified.answered) == {"embed0"}
        by_path = send_requests(gateway_port, 10, host=address, path="/embed/v1/predict",
                                headers={"Host": "modelarts-gateway.apps.svc"})
        assert by_path.failures == [] and set(by_path.answered) == {"embed0"}
        # The prefix is rewritten to "/": "/llm/health" reaches the instance as "/health".
        assert _get(address, gateway_port, "/llm/health", "modelarts-gateway") == (200, {"ok": True})
        assert _get(address, gateway_port, "/nothing/here", "modelarts-gateway")[0] == 404


def test_services_added_changed_and_removed_over_ads_without_dropping_traffic(
        tmp_path: Path, instances: Instances, start_control_plane: StartControlPlane,
        start_ads_envoy: StartAdsEnvoy) -> None:
    stable_port, extra_port = free_port(), free_port()
    services = [{"name": "stable", "listen_port": stable_port}, {"name": "extra", "listen_port": extra_port}]
    stable, extra = [instances.http("s0"), instances.http("s1")], [instances.http("x0")]
    endpoints = {"stable": [endpoint(u) for u in stable], "extra": [endpoint(u) for u in extra]}
    one = xds_config(tmp_path, services[:1])
    sink = start_control_plane(one)
    sink.publish(make_snapshot(one, endpoints))
    envoys = {A: start_ads_envoy(ads_address(one), listen_address=A),
              B: start_ads_envoy(ads_address(one), listen_address=B, delta=True)}
    for envoy in envoys.values():
        envoy.wait_for_hosts({"stable": [u.address for u in stable]})

    with LoadLoop(stable_port, A) as load_a, LoadLoop(stable_port, B) as load_b:
        # A new service: its cluster, endpoints, listener and route arrive, in that order.
        two = one.model_copy(update={"services": xds_config(tmp_path, services).services})
        sink.update_config(two)
        sink.publish(make_snapshot(two, endpoints, version=2))
        for host in envoys:
            assert wait_until(lambda h=host: set(send_requests(extra_port, 4, host=h).answered) == {"x0"},  # type: ignore[misc]
                              10), host
        # A changed cluster (LB policy) is re-warmed by Envoy: it must get its endpoints again.
        changed = xds_config(tmp_path, [{**services[0], "lb": {"policy": "round_robin"}}, services[1]])
        changed = two.model_copy(update={"services": changed.services})
        sink.update_config(changed)
        sink.publish(make_snapshot(changed, endpoints, version=3))
        for envoy in envoys.values():
            assert wait_until(lambda e=envoy: "round_robin" in json.dumps(  # type: ignore[misc]
                e.config_dump("dynamic_active_clusters")), 10), envoy.log_tail()
            assert not json.dumps(envoy.config_dump("dynamic_warming_clusters")).count('"name": "stable"')
        # A removed service: its listener goes first, then its cluster.
        sink.update_config(changed.model_copy(update={"services": changed.services[:1]}))
        sink.publish(make_snapshot(changed.model_copy(update={"services": changed.services[:1]}), endpoints,
                                   version=4))
        for envoy in envoys.values():
            assert wait_until(lambda e=envoy: served(e) == {"stable"}, 10), envoy.hosts()  # type: ignore[misc]
            assert "extra" not in envoy.listeners()
        time.sleep(0.5)
    for load in (load_a, load_b):
        assert load.result.attempts > 50 and load.result.failures == [], load.result.failures[:5]
        assert set(load.result.answered) == {"s0", "s1"}
    for envoy in envoys.values():
        assert not any(envoy.rejected_updates().values())
