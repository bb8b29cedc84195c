"""The emulator's protocol instances, spoken to directly by real clients (no Envoy): gRPC over HTTP/2,
SSE and WebSocket, with their fault knobs. The Envoy tests next to this file build on these behaviours."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2
from modelarts_emulator import Emulator, EmulatorAdminError, EmulatorConfig, ServiceConfig
from modelarts_emulator.config import StreamConfig

from tests.envoy.harness import wait_until
from tests.protocols.clients import GrpcClient, grpc_stream, sse_stream

GRPC = ServiceConfig(name="svc-grpc", schema="grpc", instances=1, stream=StreamConfig(tokens=4, interval_ms=20))
HTTP = ServiceConfig(name="svc-sse", instances=1, stream=StreamConfig(tokens=4, interval_ms=20))


@pytest.fixture(scope="module")
def emu():
    with Emulator(EmulatorConfig(services=[GRPC, HTTP], instance_address_base="127.0.5.10")) as running:
        yield running


def only(emu, svc):
    [inst] = emu.admin.instances(svc.service_id)
    return inst


def test_grpc_predict_generate_and_health_over_http2(emu):
    inst = only(emu, GRPC)
    assert inst.schema_ == "grpc"
    with GrpcClient(inst.address) as client:
        answer = client.predict(prompt="hi")
        assert answer["instance_id"] == inst.instance_id and answer["method"] == "Predict"
        stream = grpc_stream(client)
        assert stream.status == "OK" and [t["token"] for t in stream.tokens] == ["tok0", "tok1", "tok2", "tok3"]
        assert client.health() == health_pb2.HealthCheckResponse.SERVING
        emu.admin.set_healthy(inst.instance_id, False)
        assert client.health() == health_pb2.HealthCheckResponse.NOT_SERVING
        emu.admin.set_healthy(inst.instance_id, True)
        with pytest.raises(grpc.RpcError) as unknown:
            client.health("no.such.Service")
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    after = emu.admin.instance(inst.instance_id)
    assert after.health_checks >= 2 and after.streams_completed >= 1 and after.tokens_sent >= 4


def test_grpc_faults_error_reset_and_cancel(emu):
    inst = only(emu, GRPC)
    with GrpcClient(inst.address) as client:
        emu.admin.set_error_rate(inst.instance_id, 1.0)
        with pytest.raises(grpc.RpcError) as failed:
            client.predict()
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        emu.admin.set_error_rate(inst.instance_id, 0.0)

        before = emu.admin.instance(inst.instance_id)
        cut = grpc_stream(client, tokens=6, reset_after=2)
        assert cut.status == "UNAVAILABLE" and len(cut.tokens) == 2 and "reset after 2" in cut.details
        assert emu.admin.instance(inst.instance_id).streams_reset == before.streams_reset + 1

        call = client.generate(tokens=1000, interval_ms=20)
        next(iter(call))
        call.cancel()
        assert wait_until(lambda: emu.admin.instance(inst.instance_id).streams_cancelled
                          == before.streams_cancelled + 1, 5)
        assert emu.admin.instance(inst.instance_id).streams_active == 0
        with pytest.raises(grpc.RpcError) as bad:
            list(client.generate(tokens=-1))
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_grpc_kill_refuses_and_revive_serves_again(emu):
    inst = only(emu, GRPC)
    with GrpcClient(inst.address) as client:
        call = client.generate(tokens=1000, interval_ms=20)
        next(iter(call))
        emu.admin.kill(inst.instance_id)
        with pytest.raises(grpc.RpcError):
            list(call)
        assert call.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        with pytest.raises(grpc.RpcError) as refused:
            client.predict(timeout=2)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    emu.admin.revive(inst.instance_id)
    with GrpcClient(inst.address) as client:
        assert client.predict()["instance_id"] == inst.instance_id


def test_sse_first_token_interval_reset_and_cancel(emu):
    inst = only(emu, HTTP)
    host, port = inst.ip, inst.port
    stream = sse_stream(host, port, "/stream?tokens=3&first_token_ms=150&interval_ms=100")
    assert stream.status == "OK" and stream.instance == inst.instance_id and len(stream.tokens) == 3
    # Each event leaves when due, not at the end: the first one about 150 ms in, the last about 350 ms.
    assert 0.14 <= stream.first_token < stream.token_times[-1] - 0.15, stream.token_times

    cut = sse_stream(host, port, "/stream?tokens=5&interval_ms=10&reset_after=2")
    assert cut.status == "truncated" and len(cut.tokens) == 2
    assert sse_stream(host, port, "/stream?tokens=x").status == "HTTP 400"

    before = emu.admin.instance(inst.instance_id).streams_cancelled
    import socket

    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"GET /stream?tokens=1000&interval_ms=20 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    assert wait_until(lambda: emu.admin.instance(inst.instance_id).streams_cancelled == before + 1, 5)


def test_websocket_echo_generate_and_reset(emu):
    inst = only(emu, HTTP)

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session, session.ws_connect(f"http://{inst.address}/ws") as ws:
            assert (await ws.receive_json(timeout=5)) == {"event": "hello", "instance_id": inst.instance_id}
            await ws.send_str("ping")
            assert (await ws.receive_json(timeout=5))["data"] == "ping"
            await ws.send_bytes(b"\x00\x01")
            assert (await ws.receive_bytes(timeout=5)) == b"\x00\x01"
            await ws.send_json({"generate": {"tokens": 3, "interval_ms": 10}})
            events = [await ws.receive_json(timeout=5) for _ in range(4)]
            assert [e["event"] for e in events] == ["token", "token", "token", "done"]
            await ws.send_json({"generate": {"tokens": 5, "reset_after": 1}})
            assert (await ws.receive_json(timeout=5))["event"] == "token"
            closing = await ws.receive(timeout=5)
            assert closing.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE)

    asyncio.run(scenario())
    assert wait_until(lambda: emu.admin.instance(inst.instance_id).websockets == 0, 5)
    assert emu.admin.instance(inst.instance_id).streams_reset >= 1


def test_stream_settings_via_admin(emu):
    inst = only(emu, HTTP)
    emu.admin.set_stream(inst.instance_id, tokens=2, interval_ms=1)
    started = time.monotonic()
    assert len(sse_stream(inst.ip, inst.port).tokens) == 2 and time.monotonic() - started < 2
    emu.admin.set_stream(inst.instance_id, **HTTP.stream.model_dump())


def test_bad_stream_settings_are_refused_with_the_field_named(emu):
    inst = only(emu, HTTP)
    with pytest.raises(EmulatorAdminError) as refused:
        emu.admin._call("POST", f"/admin/instances/{inst.instance_id}/stream", {"tokens": -1})
    assert refused.value.status == 400 and "tokens" in refused.value.message
    with pytest.raises(EmulatorAdminError) as unknown:
        emu.admin._call("POST", f"/admin/instances/{inst.instance_id}/stream", {"token": 3})
    assert unknown.value.status == 400 and "token" in unknown.value.message
    bad = sse_stream(inst.ip, inst.port, "/stream?interval_ms=-5")
    assert bad.status == "HTTP 400"
