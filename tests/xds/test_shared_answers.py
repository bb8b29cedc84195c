"""Streams in the same EDS state share one answer per cache version (the per-stream cost of a push).

The first stream of a view works the EDS response out; the others in an equal state (subscription,
what Envoy holds) replay it. These tests pin both halves: equal states cost one `_respond` and get the
very same bytes and bookkeeping, and a stream whose state differs is never handed another's answer.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentConfig
from agent.model import Endpoint
from agent.sinks.xds.cache import XdsCache
from agent.sinks.xds.delta import DeltaSession
from agent.sinks.xds.encode import ResponseEncoder
from agent.sinks.xds.session import Session
from agent.sinks.xds.sotw import SotwSession
from agent.sinks.xds.types import CDS, EDS
from tests.envoy.harness import make_snapshot
from tests.xds.helpers import DeltaClient, SotwClient, names, xds_config


def ep(n: int, port: int = 8000) -> Endpoint:
    return Endpoint(ip=f"10.0.0.{n}", port=port)


@pytest.fixture
def config(tmp_path: Path) -> AgentConfig:
    return xds_config(tmp_path, [{"name": "a", "listen_port": 9001}, {"name": "b", "listen_port": 9002}])


def count_eds_responds(monkeypatch: pytest.MonkeyPatch, session_type: type[Session]) -> list[int]:
    calls: list[int] = []
    original: Callable[..., Any] = session_type._respond

    def counting(self: Session, state: Any, *args: Any) -> Any:
        if state.type_url == EDS:
            calls.append(id(self))
        return original(self, state, *args)

    monkeypatch.setattr(session_type, "_respond", counting)
    return calls


def sotw_clients(cache: XdsCache, encoder: ResponseEncoder, eds_names: list[list[str]]) -> list[SotwClient]:
    clients = []
    for subscription in eds_names:
        client = SotwClient(cache)
        client.session = SotwSession(cache, encoder)  # one encoder per server: what the streams share
        assert client.request(CDS)
        assert client.request(CDS) == []
        assert client.request(EDS, subscription)
        assert client.request(EDS, subscription) == []
        clients.append(client)
    return clients


def test_sotw_streams_in_one_state_cost_one_eds_answer_and_get_the_same_bytes(
        config: AgentConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    cache, encoder = XdsCache(), ResponseEncoder()
    cache.set_snapshot(make_snapshot(config, {"a": [ep(1)], "b": [ep(2)]}), config)
    clients = sotw_clients(cache, encoder, [["a", "b"]] * 5)
    calls = count_eds_responds(monkeypatch, SotwSession)
    cache.set_snapshot(make_snapshot(config, {"a": [ep(1), ep(3)], "b": [ep(2)]}), config)

    answers = [client.pump() for client in clients]

    assert len(calls) == 1
    assert len(answers[0]) == 1 and names(answers[0][0]) == ["a"]
    assert all(a == answers[0] for a in answers)
    states = [client.session.states[EDS] for client in clients]
    assert all(dict(s.known) == dict(states[0].known) and s.inflight for s in states)
    # Each stream's own ACK bookkeeping still works on the shared record.
    for client, state in zip(clients, states, strict=True):
        assert client.request(EDS, ["a", "b"]) == []
        assert not state.inflight and dict(state.acked) == dict(state.known)


def test_a_sotw_stream_with_another_subscription_gets_its_own_answer(
        config: AgentConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    cache, encoder = XdsCache(), ResponseEncoder()
    cache.set_snapshot(make_snapshot(config, {"a": [ep(1)], "b": [ep(2)]}), config)
    both, only_a = sotw_clients(cache, encoder, [["a", "b"], ["a"]])
    calls = count_eds_responds(monkeypatch, SotwSession)
    cache.set_snapshot(make_snapshot(config, {"a": [ep(1, 8001)], "b": [ep(2, 8001)]}), config)

    assert names(both.pump()[0]) == ["a", "b"]
    assert names(only_a.pump()[0]) == ["a"]
    assert len(calls) == 2


def test_delta_streams_share_an_answer_only_while_they_hold_the_same(
        config: AgentConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    cache, encoder = XdsCache(), ResponseEncoder()
    cache.set_snapshot(make_snapshot(config, {"a": [ep(1)], "b": [ep(2)]}), config)
    clients = []
    for _ in range(3):
        client = DeltaClient(cache)
        client.session = DeltaSession(cache, encoder)
        cds = client.request(CDS)[0]
        client.request(CDS, nonce=cds.nonce)
        eds = client.request(EDS, subscribe=["a", "b"])[0]
        assert client.request(EDS, nonce=eds.nonce) == []
        clients.append(client)
    # A reconnecting Envoy that says it holds an older "b": its state differs from the others'.
    stale = DeltaClient(cache)
    stale.session = DeltaSession(cache, encoder)
    cds = stale.request(CDS)[0]
    stale.request(CDS, nonce=cds.nonce)
    current_a = cache.current.view(clients[0].session.view).of(EDS)["a"].version  # type: ignore[union-attr]
    eds = stale.request(EDS, subscribe=["a", "b"], initial={"a": current_a, "b": "old"})
    assert names(eds[0]) == ["b"]
    stale.request(EDS, nonce=eds[0].nonce)
    calls = count_eds_responds(monkeypatch, DeltaSession)
    cache.set_snapshot(make_snapshot(config, {"a": [ep(1), ep(3)], "b": [ep(2)]}), config)

    answers = [client.pump() for client in clients]
    assert all(names(a[0]) == ["a"] for a in answers)
    assert len(calls) == 1
    assert names(stale.pump()[0]) == ["a"]  # b was sent in full above; now it holds what the others hold
    assert len(calls) == 1  # ... so it shares their answer too
