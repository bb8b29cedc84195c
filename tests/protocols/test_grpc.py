"""gRPC over HTTP/2 through real Envoy (file sidecar, ADS sidecar, ADS gateway) to emulator gRPC instances,
with a real grpcio client: per-call balancing, gRPC health checks, gRPC retry semantics, a killed instance."""

from __future__ import annotations

import threading
import time
from collections import Counter

import grpc
import pytest
from modelarts_emulator import ServiceConfig
from modelarts_emulator.config import StreamConfig
from modelarts_emulator.grpc_instance import PREDICT

from tests.envoy.harness import wait_until
from tests.protocols.clients import GrpcClient, grpc_stream
from tests.protocols.paths import DataPath, endpoints_of

pytestmark = pytest.mark.envoy

LLM = ServiceConfig(name="llm", schema="grpc", instances=3, stream=StreamConfig(tokens=3, interval_ms=5))


@pytest.mark.parametrize("data_path", ["file", "ads", "gateway"], indirect=True)
def test_unary_and_streams_are_balanced_per_call_over_one_connection(emulator, data_path: DataPath) -> None:
    emu = emulator(LLM)
    eps = endpoints_of(emu, LLM.service_id)
    data_path.start([{"name": "llm", "lb": {"policy": "round_robin"}}], {"llm": eps})
    target = data_path.target("llm")
    with GrpcClient(target.address, authority=target.authority) as client:  # one channel: one HTTP/2 connection
        unary = Counter(client.predict()["instance_id"] for _ in range(60))
        streams = [grpc_stream(client) for _ in range(30)]
    assert len(unary) == 3 and min(unary.values()) >= 15, unary
    assert all(s.status == "OK" and len(s.tokens) == 3 for s in streams), [s.status for s in streams]
    by_stream = Counter(s.instance for s in streams)
    assert len(by_stream) == 3 and min(by_stream.values()) >= 7, by_stream
    # Upstream, Envoy speaks HTTP/2: the cluster counts HTTP/2 connections, no HTTP/1.1 ones.
    stats = data_path.envoy.stats("cluster.llm.upstream_cx_http")
    assert stats.get("cluster.llm.upstream_cx_http2_total", 0) >= 3 and not stats.get(
        "cluster.llm.upstream_cx_http1_total"), stats


def _health_flags(envoy, cluster: str) -> dict[str, str]:
    """address -> Envoy's health flags for it ("healthy" when none are set)."""
    data = envoy.admin_json("/clusters?format=json")
    out = {}
    for status in data.get("cluster_statuses", []):
        if status["name"] != cluster:
            continue
        for host in status.get("host_statuses", []):
            sock = host["address"]["socket_address"]
            flags = {k: v for k, v in host.get("health_status", {}).items() if v and k != "eds_health_status"}
            out[f"{sock['address']}:{sock['port_value']}"] = ",".join(sorted(flags)) or "healthy"
    return out


@pytest.mark.parametrize("data_path", ["file", "ads", "gateway"], indirect=True)
def test_active_health_check_is_grpc_health(emulator, data_path: DataPath) -> None:
    emu = emulator(LLM)
    eps = endpoints_of(emu, LLM.service_id)
    data_path.start([{"name": "llm", "health_check": {"interval_seconds": 0.3, "timeout_seconds": 1}}],
                    {"llm": eps})
    dump = str(data_path.envoy.config_dump("dynamic_active_clusters"))
    assert "grpc_health_check" in dump and "http_health_check" not in dump
    sick = emu.admin.instances(LLM.service_id)[0]
    assert wait_until(lambda: emu.admin.instance(sick.instance_id).health_checks >= 2, 10)
    emu.admin.set_healthy(sick.instance_id, False)  # grpc.health.v1 answers NOT_SERVING
    assert wait_until(lambda: _health_flags(data_path.envoy, "llm").get(sick.address) == "failed_active_health_check",
                      10), _health_flags(data_path.envoy, "llm")
    target = data_path.target("llm")
    with GrpcClient(target.address, authority=target.authority) as client:
        answered = Counter(client.predict()["instance_id"] for _ in range(30))
    assert sick.instance_id not in answered and len(answered) == 2, answered
    emu.admin.set_healthy(sick.instance_id, True)
    assert wait_until(lambda: _health_flags(data_path.envoy, "llm").get(sick.address) == "healthy", 10)


NO_EJECTION = {"lb": {"policy": "round_robin"}, "outlier_detection": {"enabled": False}}


@pytest.mark.parametrize("data_path", ["file", "ads", "gateway"], indirect=True)
def test_retries_follow_grpc_semantics(emulator, data_path: DataPath) -> None:
    """UNAVAILABLE before any message is retried for the idempotent method only; a stream that has
    started (headers and tokens sent) is never retried, even when its method is declared idempotent."""
    emu = emulator(LLM)
    eps = endpoints_of(emu, LLM.service_id)
    data_path.start([{"name": "llm", **NO_EJECTION, "retries": {"idempotent_paths": [PREDICT]}},
                     {"name": "llm-all", **NO_EJECTION,
                      "retries": {"idempotent_paths": ["/modelarts.emulator.v1.Inference/"]}}],
                    {"llm": eps, "llm-all": eps})
    broken = emu.admin.instances(LLM.service_id)[0]
    emu.admin.set_error_rate(broken.instance_id, 1.0)
    target = data_path.target("llm")
    with GrpcClient(target.address, authority=target.authority) as client:
        failures = Counter()
        for _ in range(30):
            try:
                assert client.predict()["instance_id"] != broken.instance_id
            except grpc.RpcError as exc:
                failures[exc.code().name] += 1
        assert failures == Counter(), failures  # Predict is idempotent: retried elsewhere
        assert emu.admin.instance(broken.instance_id).errors >= 5  # it did get (and fail) attempts
        streams = [grpc_stream(client) for _ in range(30)]  # Generate is not declared idempotent
    codes = Counter(s.status for s in streams)
    assert codes["UNAVAILABLE"] >= 5 and codes["OK"] >= 10, codes
    emu.admin.set_error_rate(broken.instance_id, 0.0)

    # Declared idempotent, but it fails after its first token: the client already has a response.
    emu.admin.set_stream(broken.instance_id, tokens=3, interval_ms=5, reset_after=1)
    retries_before = data_path.envoy.stats("cluster.llm-all.upstream_rq_retry$").get(
        "cluster.llm-all.upstream_rq_retry", 0)
    served_before = emu.admin.instance(broken.instance_id).served
    target = data_path.target("llm-all")
    with GrpcClient(target.address, authority=target.authority) as client:
        streams = [grpc_stream(client) for _ in range(30)]
    cut = [s for s in streams if s.instance == broken.instance_id]
    assert cut and all(s.status == "UNAVAILABLE" and len(s.tokens) == 1 for s in cut), [
        (s.status, s.tokens) for s in cut]
    assert all(s.status == "OK" for s in streams if s.instance != broken.instance_id)
    assert emu.admin.instance(broken.instance_id).served - served_before == len(cut)
    assert data_path.envoy.stats("cluster.llm-all.upstream_rq_retry$").get(
        "cluster.llm-all.upstream_rq_retry", 0) == retries_before


@pytest.mark.parametrize("data_path", ["file", "ads", "gateway"], indirect=True)
def test_killed_instance_under_unary_load_fails_no_call_and_streams_end_unavailable(emulator,
                                                                                    data_path: DataPath) -> None:
    svc = LLM.model_copy(update={"instances": 4})
    emu = emulator(svc)
    eps = endpoints_of(emu, svc.service_id)
    # Round robin: the 8 streams land 2 per instance, and the victim gets its share of unary calls.
    data_path.start([{"name": "llm", "lb": {"policy": "round_robin"}, "retries": {"idempotent_paths": [PREDICT]}}],
                    {"llm": eps})
    target = data_path.target("llm")
    victim = emu.admin.instances(svc.service_id)[0]
    stop = threading.Event()
    results: Counter[str] = Counter()
    lock = threading.Lock()

    def unary_load() -> None:
        with GrpcClient(target.address, authority=target.authority) as client:
            deadline = time.monotonic() + 30
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    answer = client.predict(timeout=10)["instance_id"]
                except grpc.RpcError as exc:
                    answer = f"failed: {exc.code().name} {exc.details()}"
                with lock:
                    results[answer] += 1

    # Long streams, some of which land on the victim (round robin over 4: about a quarter).
    with GrpcClient(target.address, authority=target.authority) as streamer:
        calls = [streamer.generate(tokens=10_000, interval_ms=20) for _ in range(8)]
        firsts = [next(iter(call)) for call in calls]
        on_victim = [c for c, f in zip(calls, firsts, strict=True) if f["instance_id"] == victim.instance_id]
        workers = [threading.Thread(target=unary_load) for _ in range(4)]
        for worker in workers:
            worker.start()
        time.sleep(1.0)
        before = results[victim.instance_id]
        emu.admin.kill(victim.instance_id)  # still listed: discovery has not noticed
        time.sleep(2.0)
        stop.set()
        for worker in workers:
            worker.join(timeout=20)
        ended = {}
        for call in on_victim:
            with pytest.raises(grpc.RpcError):
                for _ in range(10_000):
                    next(call)
            ended[call.code().name] = call.details()
        survivors = [c for c in calls if c not in on_victim]
        assert not [(c.code(), c.details()) for c in survivors if c.done()]  # streams elsewhere go on
        for call in calls:
            call.cancel()
        after = [grpc_stream(streamer, tokens=2) for _ in range(12)]
    assert before > 10, results
    assert not [k for k in results if k.startswith("failed")], (
        results, data_path.envoy.stats("cluster.llm.upstream_rq_retry"))
    assert sum(results.values()) > 100, results
    assert on_victim, "no stream landed on the victim"
    assert set(ended) == {"UNAVAILABLE"}, ended  # the in-flight streams: a clear status, not a hang
    print("in-flight streams on the killed instance ended with", ended)
    assert all(s.status == "OK" and s.instance != victim.instance_id for s in after), [(s.status, s.instance)
                                                                                      for s in after]
