"""The gRPC server with a raw gRPC client (no Envoy): streams, the streams gauge, stream errors."""

from __future__ import annotations

import asyncio
import gc
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from agent.metrics import REGISTRY
from agent.model import Endpoint
from agent.sinks.xds.server import GC_THRESHOLDS, new_event_loop, raise_gc_thresholds
from agent.sinks.xds.sink import XdsSink
from agent.sinks.xds.sotw import SotwSession
from agent.sinks.xds.types import CDS
from tests.envoy.harness import make_snapshot, wait_until
from tests.xds.helpers import names, xds_config

METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[XdsSink]:
    config = xds_config(tmp_path, [{"name": "a"}, {"name": "b"}])
    sink = XdsSink(config)
    sink.start()
    sink.publish(make_snapshot(config, {"a": [Endpoint("10.0.0.1", 80)], "b": [Endpoint("10.0.0.2", 80)]}))
    try:
        yield sink
    finally:
        sink.close(grace=0)


def streams(api: str) -> float:
    return REGISTRY.get_sample_value("modelarts_agent_xds_streams", {"api": api}) or 0.0


def open_stream(sink: XdsSink) -> tuple[grpc.Channel, object]:
    assert sink.server is not None
    channel = grpc.insecure_channel(f"127.0.0.1:{sink.server.port}")
    call = channel.stream_stream(METHOD, request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
                                 response_deserializer=discovery_pb2.DiscoveryResponse.FromString)
    return channel, call(_requests_then_hold(), timeout=5)


def _requests_then_hold() -> Iterator[discovery_pb2.DiscoveryRequest]:
    """One request, then keep the request side open (a real Envoy never half-closes its stream)."""
    yield discovery_pb2.DiscoveryRequest(type_url=CDS, node=base_pb2.Node(id="raw"))
    time.sleep(6)  # longer than the call timeout: the call ends first


def test_a_raw_client_gets_clusters_and_the_gauge_counts_the_stream(sink: XdsSink) -> None:
    before = streams("sotw")
    channel, responses = open_stream(sink)
    try:
        first = next(responses)  # type: ignore[call-overload]
        assert first.type_url == CDS and names(first) == ["a", "b"] and first.nonce
        assert wait_until(lambda: streams("sotw") == before + 1, 2)
    finally:
        channel.close()
    assert wait_until(lambda: streams("sotw") == before, 5)


def test_a_server_bug_ends_the_stream_with_internal(sink: XdsSink, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: SotwSession) -> list[bytes]:
        raise KeyError("bug")

    monkeypatch.setattr(SotwSession, "responses", broken)
    channel, responses = open_stream(sink)
    try:
        with pytest.raises(grpc.RpcError) as failure:
            next(responses)  # type: ignore[call-overload]
        assert failure.value.code() == grpc.StatusCode.INTERNAL  # type: ignore[attr-defined]
    finally:
        channel.close()



def test_the_server_raises_the_young_gc_threshold_and_never_lowers_one(tmp_path: Path) -> None:
    """The default (700) costs a push to 1,000 streams ~25 young and one or two full collections."""
    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        sink = XdsSink(xds_config(tmp_path, [{"name": "a"}]))
        sink.start()
        sink.close(grace=0)
        assert gc.get_threshold() == GC_THRESHOLDS
        gc.set_threshold(100_000, 5, 50)
        raise_gc_thresholds()
        assert gc.get_threshold() == (100_000, GC_THRESHOLDS[1], 50)
        gc.set_threshold(0, 10, 10)  # automatic collection off: left so
        raise_gc_thresholds()
        assert gc.get_threshold() == (0, 10, 10)
    finally:
        gc.set_threshold(*saved)


def test_the_server_runs_on_uvloop_when_it_is_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """grpc.aio's two completions per stream per push are loop callbacks: uvloop runs them in C."""
    made: list[asyncio.AbstractEventLoop] = []

    def uvloop_new_event_loop() -> asyncio.AbstractEventLoop:
        loop = asyncio.new_event_loop()  # stands in for uvloop's: what matters is that the server asked for it
        made.append(loop)
        return loop

    monkeypatch.setitem(sys.modules, "uvloop", types.SimpleNamespace(new_event_loop=uvloop_new_event_loop))
    config = xds_config(tmp_path, [{"name": "a"}])
    sink = XdsSink(config)
    sink.start()
    try:
        sink.publish(make_snapshot(config, {"a": [Endpoint("10.0.0.1", 80)]}))
        channel, responses = open_stream(sink)
        try:
            assert names(next(responses)) == ["a"]  # type: ignore[call-overload]
        finally:
            channel.close()
    finally:
        sink.close(grace=0)
    assert len(made) == 1


def test_without_uvloop_the_server_runs_on_asyncios_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # importing it raises ImportError
    loop = new_event_loop()
    try:
        assert isinstance(loop, asyncio.SelectorEventLoop)
    finally:
        loop.close()
