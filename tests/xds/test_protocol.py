"""The ADS protocol logic without gRPC or Envoy: sessions driven by scripted requests.

Covers versions and nonces, ACK/NACK, stale nonces, what is (not) re-sent, the ADS ordering rules
(a route waits for its cluster's ACK and endpoints; a leaving cluster stays until nothing routes to
it), per-node views, withheld endpoints of unsynced services, and delta reconnects.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from envoy.service.discovery.v3 import discovery_pb2

from agent.config import AgentConfig
from agent.envoy.nodes import ALL
from agent.metrics import REGISTRY
from agent.model import Endpoint
from agent.sinks.xds.cache import XdsCache
from agent.sinks.xds.encode import ResponseEncoder
from agent.sinks.xds.types import CDS, EDS, LDS, RDS
from tests.envoy.harness import make_snapshot
from tests.xds.helpers import DeltaClient, SotwClient, names, unpack, xds_config


def ep(n: int) -> Endpoint:
    return Endpoint(ip=f"10.0.0.{n}", port=8000)


@pytest.fixture
def config(tmp_path: Path) -> AgentConfig:
    return xds_config(tmp_path, [{"name": "a", "listen_port": 9001}, {"name": "b", "listen_port": 9002}])


def nacks(type_url: str) -> float:
    return REGISTRY.get_sample_value("modelarts_agent_xds_nacks_total", {"type_url": type_url}) or 0.0


def synced_envoy(cache: XdsCache) -> SotwClient:
    """A SotW client that went through Envoy's start-up sequence: CDS, EDS, LDS, RDS, all ACKed."""
    client = SotwClient(cache)
    assert names(client.request(CDS)[0]) == ["a", "b"]
    assert client.request(CDS) == []  # ACK
    assert names(client.request(EDS, ["a", "b"])[0]) == ["a", "b"]
    assert client.request(EDS, ["a", "b"]) == []
    assert names(client.request(LDS)[0]) == ["a", "b"]
    assert client.request(LDS) == []
    assert names(client.request(RDS, ["a", "b"])[0]) == ["a", "b"]
    assert client.request(RDS, ["a", "b"]) == []
    return client


def test_spliced_responses_parse_like_protobuf_built_ones(config: AgentConfig) -> None:
    snapshot = make_snapshot(config, {"a": [ep(1), ep(2)], "b": [ep(3)]})
    cache = XdsCache()
    view = cache.set_snapshot(snapshot, config).view(ALL)
    resources = list(view.of(EDS).values())
    encoder = ResponseEncoder()
    body, nonce = encoder.sotw(EDS, "v1", resources)
    parsed = discovery_pb2.DiscoveryResponse.FromString(body)
    assert (parsed.version_info, parsed.nonce, parsed.type_url) == ("v1", nonce, EDS)
    assert [unpack(r, EDS).cluster_name for r in parsed.resources] == ["a", "b"]
    assert encoder.sotw(EDS, "v1", resources)[0] is body  # one encoding shared by every stream
    delta_body, delta_nonce = encoder.delta(EDS, "3", resources, ["gone"])
    delta = discovery_pb2.DeltaDiscoveryResponse.FromString(delta_body)
    assert [(r.name, r.version) for r in delta.resources] == [(r.name, r.version) for r in resources]
    assert list(delta.removed_resources) == ["gone"] and delta.nonce == delta_nonce != nonce
    assert unpack(delta.resources[0].resource, EDS).cluster_name == "a"


def test_unchanged_content_keeps_resource_identity_across_versions(config: AgentConfig) -> None:
    cache = XdsCache()
    first = cache.set_snapshot(make_snapshot(config, {"a": [ep(1)], "b": [ep(3)]}), config)
    second = cache.set_snapshot(make_snapshot(config, {"a": [ep(1), ep(2)], "b": [ep(3)]}, version=2), config)
    assert second.version == first.version + 1
    assert second.view(ALL).of(EDS)["b"] is first.view(ALL).of(EDS)["b"]
    assert second.view(ALL).of(EDS)["a"].version != first.view(ALL).of(EDS)["a"].version


def test_sotw_versions_nonces_and_only_changed_endpoints(config: AgentConfig) -> None:
    cache = XdsCache()
    cache.set_snapshot(make_snapshot(config, {"a": [ep(1)], "b": [ep(3)]}), config)
    client = synced_envoy(cache)
    cds_version = client.last[CDS].version_info
    cache.set_snapshot(make_snapshot(config, {"a": [ep(1), ep(2)], "b": [ep(3)]}, version=2), config)
    [update] = client.pump()
    assert update.type_url == EDS and names(update) == ["a"]  # only what changed
    assert len(unpack(update.resources[0], EDS).endpoints[0].lb_endpoints) == 2
    assert update.nonce != "" and client.last[CDS].version_info == cds_version
    # The same data again (a new snapshot object): nothing to send.
    cache.set_snapshot(make_snapshot(config, {"a": [ep(1), ep(2)], "b": [ep(3)]}, version=3), config)
    assert client.pump() == []


def test_sotw_nack_is_counted_and_not_resent_until_content_changes(config: AgentConfig,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    cache = XdsCache()
    cache.set_snapshot(make_snapshot(config, {"a": [ep(1)], "b": [ep(3)]}), config)
    client = synced_envoy(cache)
    cache.set_snapshot(make_snapshot(config, {"a": [ep(1), ep(2)], "b": [ep(3)]}, version=2), config)
    client.pump()
    before = nacks(EDS)
    assert client.request(EDS, ["a", "b"], ack=False, error="endpoint rejected: boom") == []
    assert nacks(EDS) == before + 1
    assert any("boom" in r.getMessage() for r in caplog.records)
    cache.set_snapshot(make_snapshot(config, {"a": [ep(1), ep(4)], "b": [ep(3)]}, version=3), config)
    assert [names(r) for r in client.pump()] == [["a"]]


def test_sotw_stale_nonce_is_ignored(config: AgentConfig) -> None:
    cache = XdsCache()
    cache.set_snapshot(make_snapshot(config, {"a": [ep(1)], "b": [ep(3)]}), config)
    client = synced_envoy(cache)
    old_nonce = client.last[EDS].nonce
    cache.set_snapshot(make_snapshot(config, {"a": [ep(2)], "b": [ep(3)]}, version=2), config)
    client.pump()
    # A request carrying an older nonce that also drops "b": ignored, "b" stays subscribed.
    assert client.request(EDS, ["a"], nonce=old_nonce) == []
    assert client.session.states[EDS].names == {"a", "b"}


def test_new_service_route_waits_for_cluster_ack_and_endpoints(tmp_path: Path) -> None:
    config = xds_config(tmp_path, [{"name": "a", "listen_port": 9001}, {"name": "b", "listen_port": 9002}])
    cache = XdsCache()
    cache.set_snapshot(make_snapshot(config, {"a": [ep(1)], "b": [ep(3)]}), config)
    client = synced_envoy(cache)
    bigger = xds_config(tmp_path, [{"name": "a", "listen_port": 9001}, {"name": "b", "listen_port": 9002},
                                   {"name": "c", "listen_port": 9003}])
    cache.set_snapshot(make_snapshot(bigger, {"a": [ep(1)], "b": [ep(3)], "c": [ep(5)]}), bigger)
    sent = client.pump()
    assert [r.type_url for r in sent] == [CDS, LDS]  # CDS first; the listener only names its route
    assert names(sent[0]) == ["a", "b", "c"]
    # Envoy asks for route "c" before it has ACKed cluster "c": the route must wait.
    assert client.request(RDS, ["a", "b", "c"]) == []
    assert client.request(CDS) == []  # ACK of the new cluster; its endpoints are not sent yet
    sent = client.request(EDS, ["a", "b", "c"])
    assert [(r.type_url, names(r)) for r in sent] == [(EDS, ["c"]), (RDS, ["c"])]


def test_removed_cluster_stays_until_routes_no_longer_use_it(tmp_path: Path) -> None:
    config = xds_config(tmp_path, [{"name": "a", "listen_port": 9001}, {"name": "b", "listen_port": 9002}])
    cache = XdsCache()
    cache.set_snapshot(make_snapshot(config, {"a": [ep(1)], "b": [ep(3)]}), config)
    client = synced_envoy(cache)
    smaller = xds_config(tmp_path, [{"name": "a", "listen_port": 9001}])
    cache.set_snapshot(make_snapshot(smaller, {"a": [ep(1)]}), smaller)
    sent = client.pump()
    assert [(r.type_url, names(r)) for r in sent] == [(LDS, ["a"])]  # cluster b kept: route b still uses it
    assert client.request(LDS) == []
    sent = client.request(RDS, ["a"])  # Envoy drops route b with its listener
    assert [(r.type_url, names(r)) for r in sent] == [(CDS, ["a"])]


def test_node_metadata_selects_services(config: AgentConfig) -> None:
    cache = XdsCache()
    cache.set_snapshot(make_snapshot(config, {"a": [ep(1)], "b": [ep(3)]}), config)
    client = SotwClient(cache, services=["b"])
    assert names(client.request(CDS)[0]) == ["b"]
    client.request(CDS)
    assert names(client.request(LDS)[0]) == ["b"]


def test_unsynced_service_endpoints_are_withheld_not_emptied(config: AgentConfig) -> None:
    cache = XdsCache()
    cache.set_snapshot(make_snapshot(config, {"a": [ep(1)]}, unsynced=["b"]), config)
    sotw = SotwClient(cache)
    sotw.request(CDS)
    sotw.request(CDS)
    assert [names(r) for r in sotw.request(EDS, ["a", "b"])] == [["a"]]
    delta = DeltaClient(cache)
    first = delta.request(CDS)[0]
    delta.request(CDS, nonce=first.nonce)
    # A reconnecting Envoy that still has b's endpoints keeps them: b is not reported as removed.
    [response] = delta.request(EDS, subscribe=["a", "b"], initial={"b": "from-before"})
    assert names(response) == ["a"] and list(response.removed_resources) == []


def test_delta_reconnect_sends_only_what_changed(config: AgentConfig) -> None:
    cache = XdsCache()
    cache.set_snapshot(make_snapshot(config, {"a": [ep(1)], "b": [ep(3)]}), config)
    first = DeltaClient(cache)
    cds = first.request(CDS)[0]
    assert names(cds) == ["a", "b"]
    versions = {r.name: r.version for r in cds.resources}
    eds = first.request(EDS, subscribe=["a", "b"])[0]
    eds_versions = {r.name: r.version for r in eds.resources}
    # The control plane restarts (a new cache); meanwhile a's endpoints changed.
    restarted = XdsCache()
    restarted.set_snapshot(make_snapshot(config, {"a": [ep(1), ep(2)], "b": [ep(3)]}), config)
    again = DeltaClient(restarted)
    [cds_again] = again.request(CDS, initial=versions)
    assert names(cds_again) == [] and list(cds_again.removed_resources) == []
    [eds_again] = again.request(EDS, subscribe=["a", "b"], initial=eds_versions)
    assert names(eds_again) == ["a"]


def test_delta_removal_and_nack(tmp_path: Path) -> None:
    config = xds_config(tmp_path, [{"name": "a"}, {"name": "b"}])  # no listeners: nothing routes to clusters
    cache = XdsCache()
    cache.set_snapshot(make_snapshot(config, {"a": [ep(1)], "b": [ep(3)]}), config)
    client = DeltaClient(cache)
    first = client.request(CDS)[0]
    assert client.request(CDS, nonce=first.nonce) == []
    smaller = xds_config(tmp_path, [{"name": "a"}])
    cache.set_snapshot(make_snapshot(smaller, {"a": [ep(1)]}), smaller)
    [removal] = client.pump()
    assert list(removal.removed_resources) == ["b"] and names(removal) == []
    before = nacks(CDS)
    assert client.request(CDS, nonce=removal.nonce, error="no") == []
    assert nacks(CDS) == before + 1


def test_gateway_view_has_one_listener_and_host_and_path_routes(tmp_path: Path) -> None:
    config = xds_config(tmp_path, [{"name": "a"}, {"name": "b"}, {"name": "t", "protocol": "tcp"}],
                        gateway={"listen_port": 8080})
    cache = XdsCache()
    cache.set_snapshot(make_snapshot(config, {"a": [ep(1)], "b": [ep(3)], "t": [ep(5)]}), config)
    client = SotwClient(cache, role="gateway")
    client.request(CDS)
    client.request(CDS)
    client.request(EDS, ["a", "b", "t"])
    assert names(client.request(LDS)[0]) == ["modelarts-gateway"]
    client.request(LDS)
    [routes] = client.request(RDS, ["modelarts-gateway"])
    config_ = unpack(routes.resources[0], RDS)
    domains = {vh.name: list(vh.domains) for vh in config_.virtual_hosts}
    assert domains == {"a": ["a", "a.*"], "b": ["b", "b.*"], "by-path": ["*"]}  # tcp "t" left out
    by_path = next(vh for vh in config_.virtual_hosts if vh.name == "by-path")
    assert [(r.match.prefix or r.match.path, r.route.cluster, r.route.prefix_rewrite) for r in by_path.routes] == [
        ("/a/", "a", "/"), ("/a", "a", "/"), ("/b/", "b", "/"), ("/b", "b", "/")]


def test_gateway_routes_carry_the_services_policies_and_splits(tmp_path: Path) -> None:
    config = xds_config(tmp_path, [
        {"name": "a", "retries": {"num_retries": 3}, "timeouts": {"request_seconds": 30, "idle_seconds": 60,
                                                                  "max_request_bytes": 1024}},
        {"name": "b"}], splits=[{"name": "canary", "listen_port": 9100,
                                 "backends": [{"service": "a", "weight": 90}, {"service": "b", "weight": 10}]}],
        gateway={"route_by_path": False})
    cache = XdsCache()
    from agent.envoy.nodes import NodeView

    view = cache.set_snapshot(make_snapshot(config, {"a": [ep(1)], "b": [ep(3)]}), config).view(
        NodeView(role="gateway", listen_address="127.0.1.9"))
    [listener] = [unpack_resource(r, LDS) for r in view.of(LDS).values()]
    assert listener.address.socket_address.address == "127.0.1.9"  # the node's listen address
    routes = unpack_resource(view.of(RDS)["modelarts-gateway"], RDS)
    by_name = {vh.name: vh.routes[0] for vh in routes.virtual_hosts}
    assert set(by_name) == {"a", "b", "canary"}  # host routing only
    a = by_name["a"].route
    assert a.retry_policy.num_retries.value == 3 and a.timeout.seconds == 30 and a.idle_timeout.seconds == 60
    assert "envoy.filters.http.buffer" in by_name["a"].typed_per_filter_config
    canary = by_name["canary"].route.weighted_clusters.clusters
    assert [(c.name, c.weight.value) for c in canary] == [("a", 90), ("b", 10)]
    # The gateway still sees every cluster; sidecar listeners are not part of its view.
    assert set(view.of(CDS)) == {"a", "b"} and set(view.of(LDS)) == {"modelarts-gateway"}


def test_tcp_listener_waits_for_its_cluster(tmp_path: Path) -> None:
    config = xds_config(tmp_path, [{"name": "t", "protocol": "tcp", "listen_port": 9001}])
    cache = XdsCache()
    cache.set_snapshot(make_snapshot(config, {"t": [ep(1)]}), config)
    client = SotwClient(cache)
    assert names(client.request(CDS)[0]) == ["t"]
    # A TCP listener names its cluster directly: not before the cluster is ACKed and has endpoints
    # (Envoy's first LDS request still gets an answer, without it).
    assert [names(r) for r in client.request(LDS)] == [[]]
    assert client.request(LDS) == []
    assert client.request(CDS) == []
    sent = client.request(EDS, ["t"])
    assert [(r.type_url, names(r)) for r in sent] == [(EDS, ["t"]), (LDS, ["t"])]


def unpack_resource(resource: object, type_url: str) -> object:
    from google.protobuf import any_pb2

    packed = any_pb2.Any.FromString(resource.body)  # type: ignore[attr-defined]
    return unpack(packed, type_url)
