"""gRPC statuses, time to first token and stream durations, as Envoy reports them: in the JSON access log
(file and ADS sidecar) and as Prometheus metrics from the stats access logger (sidecar and gateway)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import grpc
import pytest
from modelarts_emulator import ServiceConfig
from modelarts_emulator.config import StreamConfig

from tests.envoy.harness import wait_until
from tests.protocols.clients import GrpcClient, grpc_stream, sse_stream
from tests.protocols.paths import DataPath, endpoints_of

pytestmark = pytest.mark.envoy

# 4 tokens: the first 100 ms in, then 300 ms apart (a stream of about 1 s).
STREAM = StreamConfig(tokens=4, first_token_ms=100, interval_ms=300)
LLM = ServiceConfig(name="llm", schema="grpc", instances=2, stream=STREAM)
CHAT = ServiceConfig(name="chat", instances=1, stream=STREAM)
NO_RETRY = {"retries": {"enabled": False}, "outlier_detection": {"enabled": False}, "lb": {"policy": "round_robin"}}


def _prometheus(data_path: DataPath) -> str:
    status, body = data_path.envoy.admin("/stats/prometheus")
    assert status == 200
    return body


def _sample(body: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in body.splitlines():
        match = re.match(rf"^{re.escape(name)}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            total += float(match.group(2))
    return total


def _drive(emu, data_path: DataPath) -> None:
    """2 good streams, 3 failed unary calls (UNAVAILABLE from one instance), 1 SSE stream."""
    target = data_path.target("llm")
    bad = emu.admin.instances(LLM.service_id)[0]
    with GrpcClient(target.address, authority=target.authority) as client:
        good = [grpc_stream(client) for _ in range(2)]
        assert all(s.status == "OK" for s in good)
        emu.admin.set_error_rate(bad.instance_id, 1.0)
        failed = 0
        for _ in range(6):
            try:
                client.predict()
            except grpc.RpcError:  # the status is what the metrics must show
                failed += 1
        assert failed == 3
    chat = data_path.target("chat")
    assert sse_stream(chat.host, chat.port, "/stream", headers={"Host": chat.authority}).status == "OK"


@pytest.mark.parametrize("data_path", ["file", "ads"], indirect=True)  # the gateway has no file access log
def test_access_log_has_grpc_status_first_token_and_stream_duration(emulator, data_path: DataPath,
                                                                    tmp_path: Path) -> None:
    emu = emulator(LLM, CHAT)
    log = tmp_path / "access.log"
    spec = {**NO_RETRY, "access_log": {"path": str(log)}}
    data_path.start([{"name": "llm", **spec}, {"name": "chat", **spec}],
                    {"llm": endpoints_of(emu, LLM.service_id), "chat": endpoints_of(emu, CHAT.service_id)})
    _drive(emu, data_path)
    assert wait_until(lambda: log.exists() and len(log.read_text().splitlines()) >= 9, 10)
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    streams = [e for e in entries if e["path"].endswith("/Generate")]
    unary = [e for e in entries if e["path"].endswith("/Predict")]
    sse = [e for e in entries if e["path"] == "/stream"]
    assert len(streams) == 2 and all(e["grpc_status"] == 0 and e["status"] == 200 for e in streams), streams
    for entry in streams + sse:  # first byte about 100 ms in, about 1 s in all
        assert 80 <= entry["first_byte_ms"] <= 500 and entry["duration_ms"] >= 980, entry
        assert entry["duration_ms"] - entry["first_byte_ms"] >= 880, entry
    assert sorted(e["grpc_status"] for e in unary) == [0, 0, 0, 14, 14, 14], unary
    assert sse[0]["grpc_status"] is None and sse[0]["service"] == "chat"


@pytest.mark.parametrize("data_path", ["file", "ads", "gateway"], indirect=True)
def test_metrics_have_grpc_statuses_and_stream_histograms(emulator, data_path: DataPath) -> None:
    emu = emulator(LLM, CHAT)
    data_path.start([{"name": "llm", **NO_RETRY}, {"name": "chat", **NO_RETRY}],
                    {"llm": endpoints_of(emu, LLM.service_id), "chat": endpoints_of(emu, CHAT.service_id)})
    _drive(emu, data_path)

    def counted() -> bool:  # histograms reach the admin endpoint at Envoy's stats flush (every 5 s)
        body = _prometheus(data_path)
        return _sample(body, "envoy_modelarts_grpc_responses", service="llm", grpc_status="14") == 3 and \
            _sample(body, "envoy_modelarts_duration_ms_count") == 9

    assert wait_until(counted, 15, interval=0.5), [
        line for line in _prometheus(data_path).splitlines() if "modelarts" in line and "bucket" not in line]
    body = _prometheus(data_path)
    assert _sample(body, "envoy_modelarts_grpc_responses", service="llm", grpc_status="0") == 5
    assert _sample(body, "envoy_modelarts_grpc_responses", service="chat") == 0  # SSE is not gRPC
    # Every request has a duration; only those with a body have a first body byte (a trailers-only
    # UNAVAILABLE has none).
    for service, calls, with_body in (("llm", 8, 5), ("chat", 1, 1)):
        assert _sample(body, "envoy_modelarts_duration_ms_count", service=service) == calls, service
        assert _sample(body, "envoy_modelarts_first_byte_ms_count", service=service) == with_body, service
    # The two gRPC streams and the SSE one last over 500 ms; every first byte came within 500 ms.
    long = _sample(body, "envoy_modelarts_duration_ms_count") - _sample(
        body, "envoy_modelarts_duration_ms_bucket", le="500")
    assert long == 3, body
    assert _sample(body, "envoy_modelarts_first_byte_ms_bucket", le="500") == 6
