"""The view builder's per-service memo: a publish re-encodes only the services whose inputs moved.

Each service's cluster, endpoints, listener and routes are built and serialized from its endpoints, its
policy, its adaptive weights, the config around it and the content of its auth files; when none of those
moved since the previous version, the very same `Resource`s are served again. These tests count the
encodes (`ResourcePool.make`) per publish, check that every input invalidates, and that what a memoized
cache serves is byte for byte what a fresh build serves, with unchanged protocol semantics on top.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import any_pb2

from agent.config import AgentConfig
from agent.envoy.nodes import ALL, NodeView
from agent.model import Endpoint, Snapshot
from agent.sinks.xds.cache import XdsCache
from agent.sinks.xds.resource import ResourcePool
from agent.sinks.xds.sink import XdsSink
from agent.sinks.xds.types import CDS, EDS, LDS, RDS
from agent.sinks.xds.views import build_view
from tests.envoy.harness import make_snapshot
from tests.xds.helpers import DeltaClient, SotwClient, names, unpack, xds_config

SERVICES = ("a", "b", "c")


def eps(port: int, count: int = 3) -> list[Endpoint]:
    return [Endpoint(ip=f"10.0.0.{i + 1}", port=port) for i in range(count)]


@pytest.fixture
def config(tmp_path: Path) -> AgentConfig:
    return xds_config(tmp_path, [{"name": n, "listen_port": 9001 + i} for i, n in enumerate(SERVICES)])


@pytest.fixture
def encodes(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[tuple[str, str]]]:
    """(type, name) -> how many times a resource was serialized since the test last cleared it."""
    counts: Counter[tuple[str, str]] = Counter()
    original = ResourcePool.make

    def counting(self: ResourcePool, type_url: str, name: str, *args: Any, **kwargs: Any) -> Any:
        counts[(type_url, name)] += 1
        return original(self, type_url, name, *args, **kwargs)

    monkeypatch.setattr(ResourcePool, "make", counting)
    yield counts


def with_endpoints(snapshot: Snapshot, **changes: list[Endpoint]) -> Snapshot:
    """`snapshot` with new endpoints for the named services; the others are the very same objects."""
    services = dict(snapshot.services)
    for name, endpoints in changes.items():
        old = services[name]
        services[name] = type(old)(old.name, old.service_id, tuple(sorted(endpoints)), old.synced)
    return snapshot.with_services(services)


def initial(config: AgentConfig) -> Snapshot:
    return make_snapshot(config, {n: eps(8000 + i) for i, n in enumerate(SERVICES)})


def served(cache: XdsCache, view: NodeView = ALL) -> dict[str, dict[str, bytes]]:
    current = cache.current
    assert current is not None
    built = current.view(view)
    return {t: {n: r.body for n, r in built.of(t).items()} for t in (CDS, EDS, LDS, RDS)}


def fresh(cache: XdsCache, view: NodeView = ALL) -> dict[str, dict[str, bytes]]:
    """What a build without any memo serves for the cache's current version."""
    current = cache.current
    assert current is not None
    built = build_view(current.snapshot, current.config, view, ResourcePool(), current.weights or None)
    return {t: {n: r.body for n, r in built.of(t).items()} for t in (CDS, EDS, LDS, RDS)}


def test_an_endpoint_change_encodes_only_that_services_endpoints(config: AgentConfig,
                                                         encodes: Counter[tuple[str, str]]) -> None:
    cache = XdsCache()
    snapshot = initial(config)
    cache.set_snapshot(snapshot, config)
    assert {name for _, name in encodes} == set(SERVICES)
    encodes.clear()
    before = {n: r for n, r in cache.current.view(ALL).of(CDS).items()}  # type: ignore[union-attr]
    cache.set_snapshot(with_endpoints(snapshot, b=eps(9100)), config)
    assert encodes == {(EDS, "b"): 1}  # its cluster, listener and routes did not change either
    after = cache.current.view(ALL)  # type: ignore[union-attr]
    assert after.of(CDS)["a"] is before["a"] and after.of(CDS)["c"] is before["c"]
    assert served(cache) == fresh(cache)


def test_a_republish_of_the_same_inputs_encodes_nothing(config: AgentConfig,
                                                        encodes: Counter[tuple[str, str]]) -> None:
    cache = XdsCache()
    snapshot = initial(config)
    cache.set_snapshot(snapshot, config)
    encodes.clear()
    # Equal but not identical: a new snapshot version whose service objects are new and equal.
    again = make_snapshot(config, {n: eps(8000 + i) for i, n in enumerate(SERVICES)}, version=2)
    version = cache.set_snapshot(again, config).version
    assert version == 2
    assert not encodes


@pytest.mark.parametrize("policy", [
    {"tls": {"sni": "model.example"}},
    {"lb": {"policy": "round_robin"}},
    {"timeouts": {"connect_seconds": 2.5}},
    {"listen_port": 9999},
    {"protocol": "grpc"},
], ids=["tls", "lb", "timeouts", "port", "protocol"])
def test_a_changed_policy_invalidates_only_its_service(config: AgentConfig,
                                                       encodes: Counter[tuple[str, str]],
                                                       policy: dict[str, Any]) -> None:
    cache = XdsCache()
    snapshot = initial(config)
    cache.set_snapshot(snapshot, config)
    encodes.clear()
    changed = config.model_copy(update={"services": tuple(
        type(s).model_validate({**s.model_dump(), **policy}) if s.name == "c" else s for s in config.services)})
    cache.set_snapshot(snapshot, changed)
    assert {name for _, name in encodes} == {"c"} and (EDS, "c") not in encodes
    assert served(cache) == fresh(cache)


def test_a_rotated_api_key_file_is_served_without_a_config_change(tmp_path: Path,
                                                                  encodes: Counter[tuple[str, str]]) -> None:
    keys = tmp_path / "keys"
    keys.write_text("client-1:0123456789abcdef-KEYONE\n")
    config = xds_config(tmp_path, [{"name": "a", "listen_port": 9001},
                                   {"name": "b", "listen_port": 9002, "auth": {"api_key": {"keys_file": str(keys)}}}])
    sink = XdsSink(config)
    snapshot = make_snapshot(config, {"a": eps(8000), "b": eps(8001)})
    sink.publish(snapshot)
    first = sink.cache.current
    assert first is not None
    assert b"KEYONE" in first.view(ALL).of(LDS)["b"].body
    encodes.clear()
    keys.write_text("client-1:0123456789abcdef-KEYTWO\n")
    sink.publish(snapshot)  # what the runtime's file watch does: the same snapshot, the same config
    second = sink.cache.current
    assert second is not None and second.version > first.version
    listener = second.view(ALL).of(LDS)["b"].body
    assert b"KEYTWO" in listener and b"KEYONE" not in listener
    assert {name for _, name in encodes} == {"b"}


def test_a_config_change_around_the_services_rebuilds_them(tmp_path: Path, config: AgentConfig,
                                                           encodes: Counter[tuple[str, str]]) -> None:
    """The memo does not assume which config fields the builders read: any change outside the services
    rebuilds every service."""
    cache = XdsCache()
    snapshot = initial(config)
    cache.set_snapshot(snapshot, config)
    encodes.clear()
    changed = config.model_copy(update={"envoy": config.envoy.model_copy(update={"admin_port": 1})})
    cache.set_snapshot(snapshot, changed)
    assert {name for _, name in encodes} == set(SERVICES)


def test_new_weights_re_encode_only_the_weighted_services_endpoints(config: AgentConfig,
                                                                    encodes: Counter[tuple[str, str]]) -> None:
    cache = XdsCache()
    snapshot = initial(config)
    cache.set_snapshot(snapshot, config)
    encodes.clear()
    cache.set_snapshot(snapshot, config, {"a": {"10.0.0.1:8000": 7}})
    assert set(encodes) == {(EDS, "a")}
    assert served(cache) == fresh(cache)
    current = cache.current
    assert current is not None
    assignment = unpack(any_pb2.Any.FromString(current.view(ALL).of(EDS)["a"].body), EDS)
    assert [e.load_balancing_weight.value for e in assignment.endpoints[0].lb_endpoints] == [7, 7, 7]


def test_random_publishes_serve_what_a_fresh_build_serves(tmp_path: Path) -> None:
    """Endpoints, sync state, weights and policies changing at random, over a sidecar view, a gateway view
    and a view with its own listen address: the memoized cache serves exactly a fresh build's bytes."""
    rnd = random.Random(18)
    views = [ALL, NodeView(services=frozenset({"a", "b"}), role="sidecar", listen_address=None),
             NodeView(services=None, role="gateway", listen_address=None),
             NodeView(services=None, role="sidecar", listen_address="0.0.0.0")]
    cache = XdsCache()
    for node_view in views:
        cache.acquire(node_view)
    snapshot = Snapshot(version=0)
    for step in range(40):
        policies = [{"name": n, "listen_port": 9001 + i,
                     **({"lb": {"policy": rnd.choice(["round_robin", "least_request"])}} if rnd.random() < 0.3 else {})}
                    for i, n in enumerate(SERVICES)]
        config = xds_config(tmp_path, policies, splits=[{"name": "ab", "listen_port": 9100, "backends": [
            {"service": "a", "weight": rnd.randint(0, 3)}, {"service": "b", "weight": 1}]}])
        endpoints = {n: eps(8000 + rnd.randint(0, 2), rnd.randint(0, 3)) for n in SERVICES}
        unsynced = [n for n in SERVICES if rnd.random() < 0.15]
        snapshot = make_snapshot(config, endpoints, version=step + 1, unsynced=unsynced)
        weights = {"a": {"10.0.0.1:8000": rnd.randint(1, 5)}} if rnd.random() < 0.3 else None
        cache.set_snapshot(snapshot, config, weights)
        for node_view in views:
            assert served(cache, node_view) == fresh(cache, node_view), (step, node_view)


def test_versions_and_acks_over_memoized_publishes(config: AgentConfig) -> None:
    """A one-service change sends that service's endpoints only, with a higher version, over SotW and
    delta; a NACKed update is not re-sent while its content is unchanged, and its next change is."""
    cache = XdsCache()
    snapshot = initial(config)
    cache.set_snapshot(snapshot, config)
    sotw, delta = SotwClient(cache), DeltaClient(cache)
    sotw.request(CDS)
    sotw.request(CDS)
    sotw.request(EDS, list(SERVICES))
    assert sotw.request(EDS, list(SERVICES)) == []
    (clusters,) = delta.request(CDS)
    assert delta.request(CDS, nonce=clusters.nonce) == []
    (endpoints,) = delta.request(EDS, subscribe=list(SERVICES))
    assert delta.request(EDS, nonce=endpoints.nonce) == []
    versions = [cache.current.version]  # type: ignore[union-attr]
    snapshot = with_endpoints(snapshot, b=eps(9100))
    versions.append(cache.set_snapshot(snapshot, config).version)
    (response,) = sotw.pump()
    assert response.type_url == EDS and names(response) == ["b"]
    (delta_response,) = delta.pump()
    assert [r.name for r in delta_response.resources] == ["b"]
    assert int(delta_response.system_version_info) == versions[-1] > versions[0]
    assert sotw.request(EDS, list(SERVICES), ack=False, error="rejected") == []
    snapshot = with_endpoints(snapshot, c=eps(9200))
    versions.append(cache.set_snapshot(snapshot, config).version)
    (response,) = sotw.pump()
    assert names(response) == ["c"]  # b's rejected content is not sent again
    snapshot = with_endpoints(snapshot, b=eps(9300))
    versions.append(cache.set_snapshot(snapshot, config).version)
    (response,) = sotw.pump()
    assert names(response) == ["b"]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
