"""One xDS benchmark scenario, run in a fresh process that is the control plane.

The process starts the real `XdsSink` (cache + gRPC ADS server), spawns the simulated clients in
separate processes, waits until every stream has ACKed the initial endpoints, then makes snapshot
changes and measures, for each: the time until every stream has ACKed it (from the server's own
ACK bookkeeping), the per-stream ACK times, and the server's CPU seconds. RSS is read before the
streams connect and after the pushes.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import resource
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from types import MappingProxyType
from typing import Any

from agent.config import AgentConfig, parse_config
from agent.model import Endpoint, ServiceSnapshot, Snapshot
from agent.sinks.xds.sink import XdsSink
from agent.sinks.xds.types import EDS
from bench.xds_clients import run_clients

CHANGE_KINDS = ("one-service", "all-endpoints")


@dataclass(frozen=True)
class Scenario:
    streams: int
    services: int
    endpoints_per_service: int
    pushes: int
    client_processes: int = 1

    @property
    def endpoints(self) -> int:
        return self.services * self.endpoints_per_service


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class AckTracker:
    """Counts EDS ACKs per cache version (called on the server's event loop thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._want: tuple[int, int] | None = None
        self._started = 0.0
        self._times: list[float] = []
        self._done = threading.Event()
        self.initial: dict[int, int] = {}

    def expect(self, version: int, streams: int) -> None:
        with self._lock:
            self._want, self._times, self._started = (version, streams), [], time.perf_counter()
            self._done.clear()

    def on_ack(self, type_url: str, version: int) -> None:
        if type_url != EDS:
            return
        with self._lock:
            self.initial[version] = self.initial.get(version, 0) + 1
            if self._want is not None and version == self._want[0]:
                self._times.append(time.perf_counter() - self._started)
                if len(self._times) >= self._want[1]:
                    self._done.set()

    def wait(self, timeout: float) -> list[float]:
        if not self._done.wait(timeout):
            with self._lock:
                raise TimeoutError(f"only {len(self._times)} of {self._want} streams ACKed within {timeout}s")
        with self._lock:
            return list(self._times)

    def acked(self, version: int) -> int:
        with self._lock:
            return self.initial.get(version, 0)


def bench_config(scenario: Scenario) -> AgentConfig:
    return parse_config({
        "modelarts": {"iam_url": "http://127.0.0.1:9", "modelarts_url": "http://127.0.0.1:9", "project_id": "p"},
        "auth": {"mode": "token"},
        "services": [{"name": f"svc-{s:02d}", "service_id": f"sid-{s}"} for s in range(scenario.services)],
        "xds": {"enabled": True, "port": 18000},
    }, "bench")


def bench_snapshot(config: AgentConfig, scenario: Scenario, generation: int, changed: set[int], version: int,
              previous: Snapshot | None) -> Snapshot:
    """Every service's endpoints; services in `changed` get a new set (ports shifted by `generation`)."""
    services = {}
    for index, spec in enumerate(config.services):
        if previous is not None and index not in changed:
            services[spec.name] = previous.services[spec.name]
            continue
        endpoints = tuple(sorted(Endpoint(ip=f"10.{index}.{i // 250}.{i % 250 + 1}", port=8000 + generation)
                                 for i in range(scenario.endpoints_per_service)))
        services[spec.name] = ServiceSnapshot(spec.name, spec.service_id, endpoints=endpoints, synced=True)
    return Snapshot(version=version, services=MappingProxyType(services))


def _percentile(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def run(scenario: Scenario, out: Connection) -> None:
    """Process entry point: run the scenario, send its results (a dict) through `out`."""
    try:
        out.send(_run(scenario))
    except Exception as exc:
        out.send({"error": f"{type(exc).__name__}: {exc}"})


def _run(scenario: Scenario) -> dict[str, Any]:
    config = bench_config(scenario)
    tracker = AckTracker()
    rss_start = rss_mb()
    sink = XdsSink(config.model_copy(update={"xds": config.xds.model_copy(update={"port": _free_port()})}),
                   on_ack=tracker.on_ack)
    port = sink.start()
    snapshot = bench_snapshot(config, scenario, 0, set(), 1, None)
    sink.publish(snapshot)
    rss_before = rss_mb()
    context = multiprocessing.get_context("spawn")
    clients = []
    per_process = -(-scenario.streams // scenario.client_processes)
    for first in range(0, scenario.streams, per_process):
        parent, child = context.Pipe()
        process = context.Process(target=run_clients, args=(f"127.0.0.1:{port}", first,
                                                            min(per_process, scenario.streams - first), child),
                                  daemon=True)
        process.start()
        clients.append((process, parent))
    try:
        started = time.perf_counter()
        for _, control in clients:
            if not control.poll(120):
                raise TimeoutError("clients did not open their streams")
            control.recv()
        deadline = time.monotonic() + 120
        cache_version = sink.cache.current.version if sink.cache.current else 0
        while tracker.acked(cache_version) < scenario.streams and time.monotonic() < deadline:
            time.sleep(0.05)
        if tracker.acked(cache_version) < scenario.streams:
            raise TimeoutError(f"only {tracker.acked(cache_version)} streams synced")
        connect_seconds = time.perf_counter() - started
        time.sleep(0.5)  # let the last ACKs settle before measuring memory
        rss_synced = rss_mb()
        results: dict[str, Any] = {"scenario": asdict(scenario), "connect_and_sync_seconds": connect_seconds,
                                   "rss_start_mb": rss_start, "rss_before_streams_mb": rss_before,
                                   "rss_synced_mb": rss_synced, "changes": {}}
        generation = 0
        for kind in CHANGE_KINDS:
            pushes, stream_acks, cpu = [], [], []
            client_cpu = _client_cpu(clients)
            for push in range(scenario.pushes):
                generation += 1
                changed = {push % scenario.services} if kind == "one-service" else set(range(scenario.services))
                snapshot = bench_snapshot(config, scenario, generation, changed, snapshot.version + 1, snapshot)
                cache_version += 1
                tracker.expect(cache_version, scenario.streams)
                cpu_before = cpu_seconds()
                sink.publish(snapshot)
                acks = tracker.wait(60)
                cpu.append(cpu_seconds() - cpu_before)
                pushes.append(max(acks))
                stream_acks.extend(acks)
                time.sleep(0.05)
            results["changes"][kind] = {
                "push_all_acked_p50_s": _percentile(pushes, 50), "push_all_acked_p99_s": _percentile(pushes, 99),
                "push_all_acked_max_s": max(pushes), "stream_ack_p50_s": _percentile(stream_acks, 50),
                "stream_ack_p99_s": _percentile(stream_acks, 99), "cpu_s_per_push": statistics.mean(cpu),
                "client_cpu_s_per_push": (_client_cpu(clients) - client_cpu) / len(pushes), "pushes": len(pushes),
            }
        rss_end = rss_mb()
        results.update(rss_end_mb=rss_end, rss_peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                       rss_per_stream_kb=(rss_synced - rss_before) * 1024 / scenario.streams,
                       streams_seen=sink.server.stream_count if sink.server else 0)
        return results
    finally:
        for _, control in clients:
            with contextlib.suppress(OSError):
                control.send("stop")
        for process, _ in clients:
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join(5)
        sink.close(grace=0)


def _client_cpu(clients: list[tuple[Any, Connection]]) -> float:
    """CPU seconds the client processes used so far (to show whether they, not the server, set the pace)."""
    total = 0.0
    for _, control in clients:
        control.send("cpu")
        total += float(control.recv())
    return total


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
