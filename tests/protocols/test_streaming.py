"""Token streams through real Envoy (file sidecar, ADS sidecar, ADS gateway): SSE and gRPC server streaming
are passed on token by token, a client that goes away cancels the upstream stream, and only an idle
timeout (kept alive by the tokens) can end a stream: there is no total timeout.

Timing here is functional (the first token arrives long before the stream ends); how close the sidecar's
time to first token is to direct is measured by the benchmark (bench/scenarios/streaming.py).
"""

from __future__ import annotations

import json

import pytest
from modelarts_emulator import ServiceConfig
from modelarts_emulator.config import StreamConfig

from tests.envoy.harness import wait_until
from tests.protocols.clients import GrpcClient, grpc_stream, sse_events, sse_stream
from tests.protocols.paths import DataPath, endpoints_of

pytestmark = pytest.mark.envoy

CHAT = ServiceConfig(name="chat", instances=2, stream=StreamConfig(tokens=3, interval_ms=400))
LLM = ServiceConfig(name="llm", schema="grpc", instances=2, stream=StreamConfig(tokens=3, interval_ms=400))
PATHS = ["file", "ads", "gateway"]


def start(emulator, data_path: DataPath, **spec: object):
    emu = emulator(CHAT, LLM)
    data_path.start([{"name": "chat", **spec}, {"name": "llm", **spec}],
                    {"chat": endpoints_of(emu, CHAT.service_id), "llm": endpoints_of(emu, LLM.service_id)})
    return emu


def sse_on(data_path: DataPath, query: str = "", by_path: bool = False, timeout: float = 30.0):
    target = data_path.target("chat", by_path=by_path)
    return sse_stream(target.host, target.port, f"{target.path_prefix}/stream{query}",
                      headers={"Host": target.authority}, timeout=timeout)


def grpc_on(data_path: DataPath) -> GrpcClient:
    target = data_path.target("llm")
    return GrpcClient(target.address, authority=target.authority)


@pytest.mark.parametrize("data_path", PATHS, indirect=True)
def test_sse_and_grpc_tokens_are_passed_on_as_they_come(emulator, data_path: DataPath) -> None:
    start(emulator, data_path)
    variants = [sse_on(data_path)] + ([sse_on(data_path, by_path=True)] if data_path.mode == "gateway" else [])
    with grpc_on(data_path) as client:
        variants.append(grpc_stream(client))
    for stream in variants:
        assert stream.status == "OK" and len(stream.tokens) == 3, stream
        # Tokens leave the instance 400 ms apart: each one must arrive before the next is even made.
        assert stream.first_token < 0.3 and stream.token_times[1] < 0.7 and stream.elapsed >= 0.8, stream.token_times


def _sse_first_token_then_hang_up(data_path: DataPath) -> None:
    target = data_path.target("chat")
    events = sse_events(target.host, target.port, "/stream?tokens=10000&interval_ms=20",
                        headers={"Host": target.authority}, timeout=10)
    for _, data in events:
        if data.startswith(b"{"):
            break
    events.close()  # closes the socket: the client is gone


@pytest.mark.parametrize("data_path", PATHS, indirect=True)
def test_a_client_that_goes_away_cancels_the_upstream_stream(emulator, data_path: DataPath) -> None:
    emu = start(emulator, data_path)

    def cancelled(service: ServiceConfig) -> int:
        return sum(i.streams_cancelled for i in emu.admin.instances(service.service_id))

    def active(service: ServiceConfig) -> int:
        return sum(i.streams_active for i in emu.admin.instances(service.service_id))

    _sse_first_token_then_hang_up(data_path)
    assert wait_until(lambda: cancelled(CHAT) == 1 and active(CHAT) == 0, 5), emu.admin.instances(CHAT.service_id)
    with grpc_on(data_path) as client:
        call = client.generate(tokens=10_000, interval_ms=20)
        next(iter(call))
        call.cancel()
        assert wait_until(lambda: cancelled(LLM) == 1 and active(LLM) == 0, 5), emu.admin.instances(LLM.service_id)
        assert grpc_stream(client, tokens=1).status == "OK"  # the connection is still good


@pytest.mark.parametrize("data_path", PATHS, indirect=True)
def test_only_an_idle_timeout_ends_a_stream_and_tokens_keep_it_alive(emulator, data_path: DataPath) -> None:
    """With a 1.5 s idle timeout, a 3.3 s stream of tokens 300 ms apart goes through whole (so no total
    timeout cut it), while a stream that goes silent for 2.5 s is ended by Envoy."""
    start(emulator, data_path, timeouts={"idle_seconds": 1.5})
    long = sse_on(data_path, "?tokens=12&interval_ms=300")
    assert long.status == "OK" and len(long.tokens) == 12 and long.elapsed > 3.2, long
    with grpc_on(data_path) as client:
        streamed = grpc_stream(client, tokens=12, interval_ms=300)
        assert streamed.status == "OK" and len(streamed.tokens) == 12, streamed
        stalled = grpc_stream(client, tokens=2, first_token_ms=2500)
    silent = sse_on(data_path, "?tokens=2&first_token_ms=2500")
    assert silent.status == "truncated" and silent.tokens == [] and silent.elapsed > 1.4, silent
    assert stalled.status != "OK" and stalled.tokens == [], stalled
    routes = json.dumps(data_path.envoy.config_dump("dynamic_listeners" if data_path.mode == "file"
                                                    else "dynamic_route_configs"))
    assert '"max_stream_duration"' not in routes
    assert '"timeout": "0s"' in routes  # the route's total timeout is explicitly off


@pytest.mark.parametrize("data_path", PATHS, indirect=True)
def test_generated_defaults_suit_long_streams(emulator, data_path: DataPath) -> None:
    """Defaults, as Envoy holds them: no total route timeout, a 300 s stream idle timeout, no max duration.
    (A 10-minute stream is too long for the suite; the test above shows the same rules at 1 s scale.)"""
    start(emulator, data_path)
    dump = json.dumps([data_path.envoy.config_dump("dynamic_listeners"),
                       data_path.envoy.config_dump("dynamic_route_configs")])
    assert '"timeout": "0s"' in dump and '"300s"' in dump
    assert "max_stream_duration" not in dump and "request_timeout" not in dump


@pytest.mark.parametrize("data_path", PATHS, indirect=True)
def test_an_sse_stream_whose_instance_dies_is_cut_and_new_streams_go_elsewhere(emulator,
                                                                                  data_path: DataPath) -> None:
    emu = start(emulator, data_path, lb={"policy": "round_robin"})
    target = data_path.target("chat")
    events = sse_events(target.host, target.port, "/stream?tokens=10000&interval_ms=20",
                        headers={"Host": target.authority}, timeout=10)
    victim = None
    received = []
    for _, data in events:
        if data.startswith(b"<instance "):
            victim = data[len(b"<instance "):-1].decode()
            emu.admin.kill(victim)  # still listed: discovery has not noticed
        else:
            received.append(data)
    assert victim is not None and received[-1] == b"<truncated>", received[-3:]
    assert b"[DONE]" not in received
    after = [sse_on(data_path, "?tokens=2&interval_ms=1") for _ in range(6)]
    assert all(s.status == "OK" and s.instance != victim for s in after), after
