"""The pass a stream skips: the ACK of an EDS push moves nothing a pass reads, so it costs no pass.

Every push reads one such ACK per stream. These tests pin that it is skipped (no planner is built), that
what the skip relies on holds (an EDS response moves no input of CDS, the one type planned before EDS),
and that nothing that does move an input is skipped with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import agent.sinks.xds.session as session_module
from agent.config import AgentConfig
from agent.envoy.nodes import ALL
from agent.model import Endpoint
from agent.sinks.xds.cache import XdsCache
from agent.sinks.xds.plan import Planner
from agent.sinks.xds.types import CDS, EDS, LDS, RDS
from tests.envoy.harness import make_snapshot
from tests.xds.helpers import DeltaClient, SotwClient, names, xds_config


def ep(n: int) -> Endpoint:
    return Endpoint(ip=f"10.0.0.{n}", port=8000)


@pytest.fixture
def config(tmp_path: Path) -> AgentConfig:
    return xds_config(tmp_path, [{"name": "a", "listen_port": 9001}, {"name": "b", "listen_port": 9002}])


def count_passes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the planners built: one per pass that is not skipped."""
    built: list[int] = []

    def counting(*args: Any) -> Any:
        built.append(1)
        return Planner(*args)

    monkeypatch.setattr(session_module, "Planner", counting)
    return built


def synced_sotw(cache: XdsCache) -> SotwClient:
    client = SotwClient(cache)
    for type_url, subscription in ((CDS, ()), (EDS, ("a", "b")), (LDS, ()), (RDS, ("a", "b"))):
        assert client.request(type_url, subscription)
        assert client.request(type_url, subscription) == []
    return client


def test_the_ack_of_an_eds_push_costs_no_pass_sotw(config: AgentConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = XdsCache()
    cache.set_snapshot(make_snapshot(config, {"a": [ep(1)], "b": [ep(3)]}), config)
    client = synced_sotw(cache)
    cache.set_snapshot(make_snapshot(config, {"a": [ep(1), ep(2)], "b": [ep(3)]}, version=2), config)
    [update] = client.pump()
    assert update.type_url == EDS and names(update) == ["a"]
    passes = count_passes(monkeypatch)

    assert client.request(EDS, ["a", "b"]) == []  # the ACK

    assert passes == []
    assert client.session.states[EDS].acked["a"].version == client.session.states[EDS].known["a"].version


def test_the_ack_of_an_eds_push_costs_no_pass_delta(config: AgentConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = XdsCache()
    cache.set_snapshot(make_snapshot(config, {"a": [ep(1)], "b": [ep(3)]}), config)
    client = DeltaClient(cache)
    cds = client.request(CDS)[0]
    assert client.request(CDS, nonce=cds.nonce) == []
    eds = client.request(EDS, subscribe=["a", "b"])[0]
    assert client.request(EDS, nonce=eds.nonce) == []
    cache.set_snapshot(make_snapshot(config, {"a": [ep(1), ep(2)], "b": [ep(3)]}, version=2), config)
    [update] = client.pump()
    assert update.type_url == EDS and names(update) == ["a"]
    passes = count_passes(monkeypatch)

    assert client.request(EDS, nonce=update.nonce) == []

    assert passes == []


def test_an_eds_response_moves_no_input_of_cds(config: AgentConfig) -> None:
    """What the skip after an EDS-only pass relies on: CDS, planned before EDS, does not read what it moved."""
    cache = XdsCache()
    cache.set_snapshot(make_snapshot(config, {"a": [ep(1)], "b": [ep(3)]}), config)
    client = synced_sotw(cache)
    current = cache.current
    assert current is not None
    view = current.view(ALL)
    cds_before = client.session._inputs(CDS, view)
    eds_before = client.session._inputs(EDS, view)

    cache.set_snapshot(make_snapshot(config, {"a": [ep(1), ep(2)], "b": [ep(3)]}, version=2), config)
    assert [r.type_url for r in client.pump()] == [EDS]
    assert client.request(EDS, ["a", "b"]) == []

    assert client.session._inputs(CDS, view) == cds_before
    assert client.session._inputs(EDS, view) != eds_before  # the key does see an EDS response


def test_what_moves_an_input_after_a_skipped_ack_is_still_answered(config: AgentConfig, tmp_path: Path) -> None:
    cache = XdsCache()
    cache.set_snapshot(make_snapshot(config, {"a": [ep(1)], "b": [ep(3)]}), config)
    client = synced_sotw(cache)
    cache.set_snapshot(make_snapshot(config, {"a": [ep(2)], "b": [ep(3)]}, version=2), config)
    client.pump()
    assert client.request(EDS, ["a", "b"]) == []  # skipped
    # A new push, then a NACK of it, then a resubscription: each is a pass with its own answer.
    cache.set_snapshot(make_snapshot(config, {"a": [ep(2)], "b": [ep(4)]}, version=3), config)
    assert [names(r) for r in client.pump()] == [["b"]]
    assert client.request(EDS, ["a", "b"], ack=False, error="rejected") == []
    assert client.request(EDS, ["a"]) == []  # drops b: nothing to send, b forgotten
    assert [names(r) for r in client.request(EDS, ["a", "b"])] == [["b"]]
    # A change of the clusters after skipped ACKs still reaches CDS first.
    bigger = xds_config(tmp_path / "bigger", [{"name": "a", "listen_port": 9001}, {"name": "b", "listen_port": 9002},
                                              {"name": "c", "listen_port": 9003}])
    cache.set_snapshot(make_snapshot(bigger, {"a": [ep(2)], "b": [ep(4)], "c": [ep(5)]}, version=4), bigger)
    assert client.pump()[0].type_url == CDS
