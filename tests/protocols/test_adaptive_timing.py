"""The adaptive loop's per-host timing counters through a real Envoy (agent/envoy/access_log.py
`adaptive_timing_logs`, read by agent/adaptive/envoy_admin.py): only 2xx answers with a body are timed.

A trailers-only gRPC error is an HTTP 200 without a body: it has no time to first byte, so counting it
would make its host look faster. Issue 18 replaced the logger's CEL filter (`response.size > 0`) with
built-in status filters and a `body` tag; this checks the count still leaves such answers out, in the
sidecar (file) and the gateway.
"""

from __future__ import annotations

import json

import grpc
import pytest
from modelarts_emulator import ServiceConfig
from modelarts_emulator.config import StreamConfig

from agent.adaptive.envoy_admin import TIMING_FILTER, parse_clusters, parse_timing
from tests.envoy.harness import wait_until
from tests.protocols.clients import GrpcClient, grpc_stream
from tests.protocols.paths import DataPath, endpoints_of

pytestmark = pytest.mark.envoy

LLM = ServiceConfig(name="llm", schema="grpc", instances=2,
                    stream=StreamConfig(tokens=2, first_token_ms=20, interval_ms=20))
ADAPTIVE = {"retries": {"enabled": False}, "outlier_detection": {"enabled": False},
            "lb": {"policy": "least_request", "adaptive": True}}


def _totals(data_path: DataPath) -> tuple[int, int, int]:
    """(timed answers, their summed time to first byte in µs, answers) over every host of every cluster."""
    assert data_path.envoy is not None
    status, stats = data_path.envoy.admin(TIMING_FILTER)
    assert status == 200
    timing = parse_timing(json.loads(stats))
    status, clusters = data_path.envoy.admin("/clusters?format=json")
    assert status == 200
    hosts = [c for members in parse_clusters(json.loads(clusters)).values() for c in members.values()]
    answers = sum(c.rq_success + c.rq_error for c in hosts)
    timed = [t for hosts in timing.values() for t in hosts.values()]
    return sum(t.get("timed", 0) for t in timed), sum(t.get("timed_us", 0) for t in timed), answers


@pytest.mark.parametrize("data_path", ["file", "gateway"], indirect=True)
def test_trailers_only_errors_are_answers_but_not_timed(emulator, data_path: DataPath) -> None:
    emu = emulator(LLM)
    data_path.start([{"name": "llm", **ADAPTIVE}], {"llm": endpoints_of(emu, LLM.service_id)})
    target = data_path.target("llm")
    bad = emu.admin.instances(LLM.service_id)[0]
    failed = 0
    with GrpcClient(target.address, authority=target.authority) as client:
        assert all(grpc_stream(client).status == "OK" for _ in range(2))
        emu.admin.set_error_rate(bad.instance_id, 1.0)
        for _ in range(8):
            try:
                client.predict()
            except grpc.RpcError:  # UNAVAILABLE, trailers-only: HTTP 200, no body
                failed += 1
    assert 0 < failed < 8  # least_request sent calls to both instances
    # Every call was answered (HTTP 200; Envoy counts the gRPC errors as rq_error); the timed ones are those
    # with a body: the 2 streams and the good calls.
    assert wait_until(lambda: _totals(data_path)[2] == 10, 10), _totals(data_path)
    timed, timed_us, _ = _totals(data_path)
    assert timed == 10 - failed, (timed, failed)
    assert timed_us >= 2 * 15_000  # each stream's first token comes 20 ms in
