"""Scenario 8, gRPC and token streams: direct, a hand-written minimal Envoy, and the sidecar Envoy, in one run.

- gRPC unary: Predict at a fixed rate to every arm at once, open loop (each call is issued at its scheduled
  time with grpcio's futures, latency counted from that time, so a slow answer cannot delay the next call);
  tick by tick one call to each arm, a third of a tick apart, the order rotating.
- Time to first token (TTFT): gRPC server-streaming Generate and SSE (`/stream`), one stream after
  another over a kept-alive connection per arm, the arms taking turns stream by stream; TTFT is from
  sending the request to the first token's bytes.

Instances are the emulator's (a child process on core 0, with this client); the Envoys on core 1, one
worker each: the sidecar's config rendered by the agent's EnvoyFileSink with the default service policy,
the minimal one `bench/minimal_envoy.py` (a listener, the router, one STATIC cluster; HTTP/2 upstream for
gRPC), which is the least any Envoy sidecar costs (issue 18). The arms are interleaved call by call, so a
stall of the machine or the client lands on every arm alike (an arm run in a block of its own caught its
stalls alone, and with 300 calls per arm and round 3 calls decided each round's p99: the 95 % interval of
the unary figure was -5.9 to +1.75 ms). Each figure is the p99 of all rounds pooled, with a 95 % interval from
resampling paired blocks (2 s of calls or 100 streams per arm, every arm in each): an interval that
straddles the target is INCONCLUSIVE, not a PASS or a MISS. The client's garbage collector runs between the
phases, never during one.

Idle CPUs: by default the run holds /dev/cpu_dma_latency at 0 (PM QoS, as tuned's latency-performance
profile does), for every arm alike, so an idle CPU polls instead of halting. On a VM whose idle vCPUs halt
(the reference machine's cpuidle driver is haltpoll with guest polling off), every hand-off to an idle
core (client -> Envoy -> instance -> Envoy -> client) otherwise waits for the hypervisor to wake that
vCPU, and that wake-up, not Envoy's work, is most of the tail a proxy on its own core adds.
`--latency-qos off` (or BENCH_LATENCY_QOS=off) measures the machine as it is; `ab` runs both settings in
each round, side by side.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import http.client
import os
import random
import signal
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf import struct_pb2
from modelarts_emulator.client import EmulatorAdmin
from modelarts_emulator.grpc_instance import GENERATE, PREDICT, to_struct

from bench import report
from bench.env import ENVOY_CPU, LOADGEN_CPU, cpu_latency_qos, cpuidle_facts, taskset_prefix
from bench.minimal_envoy import MinimalEnvoy
from bench.scenarios import Check, Ctx, ScenarioResult, fmt_ms, free_port, proc_cpu_seconds, sidecar, start_emulator

NAME = "streaming"
TITLE = "8. gRPC and token streams: direct vs a hand-written minimal Envoy vs the sidecar Envoy"
UNARY_P99_TARGET_MS = 1.0  # added by the sidecar at a fixed rate, as for HTTP in scenario 1
TTFT_P99_TARGET_MS = 1.0  # the target: TTFT through the sidecar within 1 ms p99 of direct
ARMS = ("direct", "minimal", "sidecar")
KINDS = ("unary", "grpc", "sse")
BOOTSTRAP = 2000  # resamples of the blocks
OPTIONS = [("grpc.enable_http_proxy", 0)]
# "held": /dev/cpu_dma_latency at 0 for the measurement (idle CPUs poll); "off": the machine's default.
SETTINGS = ("held", "off")
QOS_CHOICES = {"on": ("held",), "off": ("off",), "ab": ("held", "off")}
QOS_ENV = "BENCH_LATENCY_QOS"
# The scenario's bound, set up included (bench/run.py budgets this much for it): ~225 s in full with the
# defaults, ~13 s quick; a round that would end past it is not started.
MAX_SECONDS, QUICK_MAX_SECONDS = 240.0, 25.0


@dataclass(frozen=True)
class Options:
    rounds: int
    streams_per_round: int  # per arm and kind
    unary_seconds: float  # per round: every arm at the rate at once, interleaved
    qos: str = "on"  # a key of QOS_CHOICES
    max_seconds: float = MAX_SECONDS  # no round starts that would end past this

    @classmethod
    def default(cls, quick: bool) -> Options:
        qos = os.environ.get(QOS_ENV, "on")
        if qos not in QOS_CHOICES:
            raise ValueError(f"{QOS_ENV}={qos!r}: expected one of {', '.join(QOS_CHOICES)}")
        return cls(3, 100, 2.0, qos, QUICK_MAX_SECONDS) if quick else cls(10, 800, 12.0, qos, MAX_SECONDS)


# The resampling units: a block is a stretch of time in which every arm ran (interleaved), so resampling
# blocks keeps the pairs; smaller than a round, so there are enough of them for an interval.
UNARY_BLOCK_SECONDS = 2.0
STREAM_BLOCK = 100
SLOW_MS = 10.0  # a unary call this slow is a stall (the p50 is ~3 ms), counted per arm


def _stub(channel: grpc.Channel, method: str, stream: bool) -> Any:
    make = channel.unary_stream if stream else channel.unary_unary
    return make(method, request_serializer=struct_pb2.Struct.SerializeToString,
                response_deserializer=struct_pb2.Struct.FromString)


# One stream's shape: the first token at once, then one more; TTFT is all that is measured, so the rest
# of the stream is kept short and more streams fit in the same time.
STREAM_TOKENS, STREAM_INTERVAL_MS = 2, 1


def rotated(arms: tuple[str, ...], index: int) -> tuple[str, ...]:
    shift = index % len(arms)
    return arms[shift:] + arms[:shift]


def unary_interleaved(addresses: dict[str, str], rate: float, seconds: float,
                      block_seconds: float) -> tuple[dict[str, list[list[float]]], dict[str, int]]:
    """Open-loop Predict calls at `rate`/s to every arm at once, for `seconds`: tick i sends one call to each
    arm, 1/(rate x arms) apart, in an order that rotates with i, so a stall of the machine lands on every arm
    alike. Returns per arm its latencies (ms, from the scheduled time) in blocks of `block_seconds`, and the
    failures per arm."""
    arms = tuple(addresses)
    per_block = max(1, int(rate * block_seconds))
    ticks = int(rate * seconds)
    blocks: dict[str, list[list[float]]] = {arm: [[] for _ in range((ticks + per_block - 1) // per_block)]
                                            for arm in arms}
    failures = dict.fromkeys(arms, 0)
    lock = threading.Lock()
    channels = {arm: grpc.insecure_channel(address, options=OPTIONS) for arm, address in addresses.items()}
    try:
        stubs = {arm: _stub(channel, PREDICT, stream=False) for arm, channel in channels.items()}
        for stub in stubs.values():
            stub(to_struct({}), timeout=5)  # connect outside the measurement
        request = to_struct({"n": 1})
        pending = []
        step = 1.0 / (rate * len(arms))
        start = time.perf_counter()
        for tick in range(ticks):
            for slot, arm in enumerate(rotated(arms, tick)):
                due = start + tick / rate + slot * step
                while (now := time.perf_counter()) < due:
                    time.sleep(min(0.0005, due - now))
                future = stubs[arm].future(request, timeout=5)

                def done(f: Any, due: float = due, arm: str = arm, block: int = tick // per_block) -> None:
                    elapsed = (time.perf_counter() - due) * 1000.0
                    with lock:
                        if f.exception() is None:
                            blocks[arm][block].append(elapsed)
                        else:
                            failures[arm] += 1

                future.add_done_callback(done)
                pending.append(future)
        for future in pending:
            future.exception(timeout=10)
    finally:
        for channel in channels.values():
            channel.close()
    return blocks, failures


class _GrpcStreams:
    """One kept channel to one arm; `ttft()` opens a Generate stream and returns its time to first token."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address, options=OPTIONS)
        self.generate = _stub(self.channel, GENERATE, stream=True)
        self.request = to_struct({"tokens": STREAM_TOKENS, "interval_ms": STREAM_INTERVAL_MS})
        list(self.generate(to_struct({"tokens": 1}), timeout=5))  # connect outside the measurement

    def ttft(self) -> float:
        started = time.perf_counter()
        iterator = iter(self.generate(self.request, timeout=10))
        next(iterator)
        elapsed = (time.perf_counter() - started) * 1000.0
        for _ in iterator:
            pass
        return elapsed

    def close(self) -> None:
        self.channel.close()


class _SseStreams:
    """One kept-alive HTTP/1.1 connection to one arm; `ttft()` opens a /stream and returns its TTFT."""

    PATH = f"/stream?tokens={STREAM_TOKENS}&interval_ms={STREAM_INTERVAL_MS}"

    def __init__(self, host: str, port: int) -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=10)
        self.ttft()  # connects, outside the measurement

    def ttft(self) -> float:
        started = time.perf_counter()
        self.conn.request("GET", self.PATH)
        response = self.conn.getresponse()
        seen = b""
        for _ in range(1000):
            seen += response.read1(65536)
            if b"data: {" in seen:
                break
        elapsed = (time.perf_counter() - started) * 1000.0
        response.read()
        if response.status != 200:
            raise RuntimeError(f"SSE stream answered HTTP {response.status}")
        return elapsed

    def close(self) -> None:
        self.conn.close()


def streams_interleaved(clients: dict[str, _GrpcStreams] | dict[str, _SseStreams], streams: int,
                        block_streams: int) -> dict[str, list[list[float]]]:
    """`streams` streams per arm, one after another, the arms taking turns stream by stream (the order
    rotating), so drift lands on every arm alike; TTFTs (ms) in blocks of `block_streams` per arm."""
    arms = tuple(clients)
    blocks: dict[str, list[list[float]]] = {arm: [] for arm in arms}
    for index in range(streams):
        if index % block_streams == 0:
            for arm in arms:
                blocks[arm].append([])
        for arm in rotated(arms, index):
            blocks[arm][-1].append(clients[arm].ttft())
    return blocks


# Echoes each byte back: the other end of the wake-up probe, on Envoy's core.
_ECHO = "import os\nwhile (b := os.read(0, 1)):\n    os.write(1, b)\n"


def wake_round_trips(count: int, gap_s: float = 0.001, cpu: str = ENVOY_CPU) -> list[float]:
    """µs for one byte to reach a process on `cpu` and come back, `gap_s` apart (so both cores go idle
    in between): the hand-off every proxied request makes twice, without the proxy's work."""
    proc = subprocess.Popen([*taskset_prefix(cpu), sys.executable, "-c", _ECHO], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, bufsize=0)
    assert proc.stdin is not None and proc.stdout is not None
    send, receive = proc.stdin.fileno(), proc.stdout.fileno()
    out = []
    try:
        os.write(send, b"x")
        os.read(receive, 1)  # started
        for _ in range(count):
            time.sleep(gap_s)
            started = time.perf_counter()
            os.write(send, b"x")
            os.read(receive, 1)
            out.append((time.perf_counter() - started) * 1e6)
    finally:
        proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return out


def _cpu_times(cpu: str) -> list[int]:
    """/proc/stat's jiffies for one CPU: user nice system idle iowait irq softirq steal."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            return [int(v) for v in line.split()[1:9]]
    return [0] * 8


def core_share(before: list[int], after: list[int], own_seconds: float) -> tuple[float, float]:
    """(share of the core busy with anything but `own_seconds` of our processes, share stolen by the
    hypervisor) between two _cpu_times readings: what else competed for Envoy's core in a round."""
    delta = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(delta) or 1
    tick = os.sysconf("SC_CLK_TCK")
    busy = (delta[0] + delta[1] + delta[2] + delta[5] + delta[6]) / tick
    return max(0.0, busy - own_seconds) / (total / tick), delta[7] / total


def _pin(cpu: str) -> Callable[[], None]:
    """Pin this process (the clients) to `cpu` for the scenario; returns the undo."""
    try:
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {int(cpu)})
    except (AttributeError, OSError, ValueError):
        return lambda: None
    return lambda: os.sched_setaffinity(0, before)


def _p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def added_p99(units: dict[str, list[list[float]]], arm: str, base: str, seed: int = 1) -> tuple[float, float, float]:
    """p99 of `arm` minus p99 of `base`, all units pooled, and a 95 % interval from resampling whole units
    (the same units for both arms: a unit is a block of time in which both ran, interleaved)."""
    arm_units = [np.asarray(u, dtype=float) for u in units[arm]]
    base_units = [np.asarray(u, dtype=float) for u in units[base]]

    def diff(indices: list[int]) -> float:
        return float(np.percentile(np.concatenate([arm_units[i] for i in indices]), 99)
                     - np.percentile(np.concatenate([base_units[i] for i in indices]), 99))

    count = len(arm_units)
    rng = random.Random(seed)
    draws = sorted(diff([rng.randrange(count) for _ in range(count)]) for _ in range(BOOTSTRAP))
    return diff(list(range(count))), draws[int(0.025 * BOOTSTRAP)], draws[int(0.975 * BOOTSTRAP) - 1]


def round_differences(rounds: dict[str, list[list[float]]], arm: str, base: str) -> list[float]:
    """Per round, p99 of `arm` minus p99 of `base` in that round: the paired differences, one a round."""
    return [_p(a, 99) - _p(b, 99) for a, b in zip(rounds[arm], rounds[base], strict=True)]


def verdict(low: float, high: float, target: float) -> tuple[bool, bool]:
    """(passed, inconclusive) for "added ≤ target": decided only when the whole interval is on one side."""
    return high <= target, low <= target < high


SETTING_TEXT = {"held": "with /dev/cpu_dma_latency held at 0 (idle CPUs poll)",
                "off": "without the latency setting (idle CPUs halt)"}


def run(ctx: Ctx, options: Options | None = None) -> ScenarioResult:
    result = ScenarioResult(NAME, TITLE)
    opts = options or Options.default(ctx.quick)
    settings = QOS_CHOICES[opts.qos]
    # 100 calls/s per arm (300/s in all): well inside what the Python client and instance serve on one
    # shared core, so the instance side does not queue and what differs between the arms is the proxy.
    rate = 100.0
    began = time.monotonic()

    ctx.step("starting the emulator (gRPC and SSE instances), the sidecar Envoy and the minimal Envoys")
    emulator, info = start_emulator(ctx, {"instance_address_base": "127.0.0.41", "services": [
        {"name": "llm", "service_id": "bench-llm", "schema": "grpc", "instances": 1},
        {"name": "chat", "service_id": "bench-chat", "instances": 1}]})
    if emulator.proc is not None:  # the instances share core 0 with the clients, as the Go upstream does
        with contextlib.suppress(OSError):
            os.sched_setaffinity(emulator.proc.pid, {int(LOADGEN_CPU)})
    admin = EmulatorAdmin(info["admin_url"])
    [llm] = admin.instances("bench-llm")
    [chat] = admin.instances("bench-chat")
    admin.close()
    grpc_port, sse_port = free_port(), free_port()
    envoy, _, _ = sidecar(ctx, [{"name": "llm", "listen_port": grpc_port, "protocol": "grpc"},
                                {"name": "chat", "listen_port": sse_port, "protocol": "http"}],
                          {"llm": [(llm.ip, llm.port)], "chat": [(chat.ip, chat.port)]})
    minimal_grpc_port, minimal_sse_port = free_port(), free_port()
    minimal_grpc = ctx.track(MinimalEnvoy(ctx.workdir, "minimal-grpc", minimal_grpc_port, free_port(), llm.ip,
                                          llm.port, http2=True)).start()
    minimal_sse = ctx.track(MinimalEnvoy(ctx.workdir, "minimal-sse", minimal_sse_port, free_port(), chat.ip,
                                         chat.port)).start()
    grpc_at = {"direct": llm.address, "minimal": f"127.0.0.1:{minimal_grpc_port}",
               "sidecar": f"127.0.0.1:{grpc_port}"}
    sse_at = {"direct": (chat.ip, chat.port), "minimal": ("127.0.0.1", minimal_sse_port),
              "sidecar": ("127.0.0.1", sse_port)}
    # The Envoy process each (arm, kind) goes through, for its CPU time per call or stream.
    proxies = {("sidecar", "unary"): envoy.pid, ("sidecar", "grpc"): envoy.pid, ("sidecar", "sse"): envoy.pid,
               ("minimal", "unary"): minimal_grpc.pid, ("minimal", "grpc"): minimal_grpc.pid,
               ("minimal", "sse"): minimal_sse.pid}

    undo = _pin(LOADGEN_CPU)
    # The probe runs with both settings whatever the arms run with: it is what the setting is for.
    wake: dict[str, list[float]] = {st: [] for st in SETTINGS}
    try:
        ctx.step("the cross-core wake-up probe")
        for block in range(4):  # settings alternating, so drift hits both alike
            for setting in (SETTINGS if block % 2 == 0 else SETTINGS[::-1]):
                with cpu_latency_qos(0 if setting == "held" else None):
                    wake[setting].extend(wake_round_trips(100 if ctx.quick else 500))
    except OSError as exc:  # the probe explains the figures; it is not one of them
        ctx.log(f"wake-up probe failed: {exc}")
    # per setting, kind and arm: the resampling blocks, and one list of values per round
    units: dict[str, dict[str, dict[str, list[list[float]]]]] = {
        st: {k: {a: [] for a in ARMS} for k in KINDS} for st in settings}
    data: dict[str, dict[str, dict[str, list[list[float]]]]] = {
        st: {k: {a: [] for a in ARMS} for k in KINDS} for st in settings}
    unary_failed = dict.fromkeys(ARMS, 0)
    envoy_cpu: dict[tuple[str, str, str], list[float]] = {
        (st, arm, kind): [] for st in settings for arm, kind in proxies}  # µs per call or stream
    qos_done: dict[str, str] = {}
    envoy_pids = sorted(set(proxies.values()))
    # per setting, one (other work, steal) share of Envoy's core per round
    contention: dict[str, list[tuple[float, float]]] = {st: [] for st in settings}
    grpc_clients = sse_clients = None

    def measured(setting: str, kind: str, work: Callable[[], dict[str, list[list[float]]]]) -> None:
        """Runs one interleaved phase (every arm in it) and files its blocks and the Envoys' CPU per call."""
        cpu0 = {pid: proc_cpu_seconds(pid) for pid in envoy_pids}
        blocks = work()
        cpu1 = {pid: proc_cpu_seconds(pid) for pid in envoy_pids}
        for arm in ARMS:
            count = sum(len(b) for b in blocks[arm])
            pid = proxies.get((arm, kind))
            if pid and count:
                envoy_cpu[(setting, arm, kind)].append((cpu1[pid] - cpu0[pid]) / count * 1e6)
            units[setting][kind][arm].extend(blocks[arm])
            data[setting][kind][arm].append([v for b in blocks[arm] for v in b])

    rounds_done = 0
    slowest_round = 0.0
    # The client's own garbage collector would pause whichever arm's call is in flight: collected between
    # the phases, never during one.
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        grpc_clients = {arm: _GrpcStreams(grpc_at[arm]) for arm in ARMS}
        sse_clients = {arm: _SseStreams(*sse_at[arm]) for arm in ARMS}
        for clients in (grpc_clients, sse_clients):  # connections and code paths warm, outside the measurement
            streams_interleaved(clients, 10, 10)
        for index in range(opts.rounds):
            if index and time.monotonic() - began + slowest_round > opts.max_seconds:
                result.notes.append(f"Stopped after {index} of {opts.rounds} rounds: the next would have ended "
                                    f"past the scenario's bound of {opts.max_seconds:.0f} s.")
                break
            round_began = time.monotonic()
            for setting in (settings if index % 2 == 0 else settings[::-1]):
                # Held for this part of the round only, for every arm in it alike; closed at its end.
                with cpu_latency_qos(0 if setting == "held" else None) as done:
                    qos_done[setting] = done
                    core0, envoys0 = _cpu_times(ENVOY_CPU), sum(proc_cpu_seconds(p) for p in envoy_pids)
                    label = f"round {index + 1}/{opts.rounds}" + (f", {setting}" if len(settings) > 1 else "")
                    ctx.step(f"{label}: gRPC unary at {rate:.0f}/s per arm, the arms interleaved")

                    def unary_work(index: int = index) -> dict[str, list[list[float]]]:
                        blocks, failed = unary_interleaved(
                            {arm: grpc_at[arm] for arm in rotated(ARMS, index)}, rate, opts.unary_seconds,
                            UNARY_BLOCK_SECONDS)
                        for arm, count in failed.items():
                            unary_failed[arm] += count
                        return blocks

                    gc.collect()
                    measured(setting, "unary", unary_work)
                    ctx.step(f"{label}: gRPC and SSE time to first token, the arms interleaved")
                    gc.collect()
                    measured(setting, "grpc", functools.partial(streams_interleaved, grpc_clients,
                                                                opts.streams_per_round, STREAM_BLOCK))
                    gc.collect()
                    measured(setting, "sse", functools.partial(streams_interleaved, sse_clients,
                                                               opts.streams_per_round, STREAM_BLOCK))
                    envoys = sum(proc_cpu_seconds(p) for p in envoy_pids) - envoys0
                    contention[setting].append(core_share(core0, _cpu_times(ENVOY_CPU), envoys))
            rounds_done = index + 1
            slowest_round = max(slowest_round, time.monotonic() - round_began)
    finally:
        gc.enable()
        gc.unfreeze()
        for group in (grpc_clients, sse_clients):
            for client in (group or {}).values():
                client.close()
        undo()

    main_setting = settings[0]
    if main_setting == "held" and qos_done["held"].startswith("not set"):
        main_note = f"; the latency setting could not be held ({qos_done['held']})"
    else:
        main_note = ""
    figures = [("gRPC unary", "unary", UNARY_P99_TARGET_MS, f"at {rate:.0f} calls/s"),
               ("gRPC stream TTFT", "grpc", TTFT_P99_TARGET_MS, "Generate"),
               ("SSE TTFT", "sse", TTFT_P99_TARGET_MS, "/stream")]
    rows = []
    for label, kind, target, what in figures:
        rounds = data[main_setting][kind]
        blocks = units[main_setting][kind]
        pooled = {arm: [v for part in rounds[arm] for v in part] for arm in ARMS}
        added, low, high = added_p99(blocks, "sidecar", "direct")
        passed, unsure = verdict(low, high, target)
        p50_added = _p(pooled["sidecar"], 50) - _p(pooled["direct"], 50)
        minimal, m_low, m_high = added_p99(blocks, "minimal", "direct")
        extra, e_low, e_high = added_p99(blocks, "sidecar", "minimal")
        paired = round_differences(rounds, "sidecar", "direct")
        result.checks.append(Check(
            f"{label} p99 added by the sidecar ({what})",
            f"{added:+.2f} ms ({fmt_ms(_p(pooled['direct'], 99))} -> {fmt_ms(_p(pooled['sidecar'], 99))})",
            f"≤ {target:.0f} ms", passed, inconclusive=unsure,
            note=f"all rounds pooled, {len(pooled['sidecar'])} per arm; 95 % interval {low:+.2f} to {high:+.2f} ms "
                 f"(resampled paired blocks, {len(blocks['sidecar'])})"
                 + ("; the interval straddles the target" if unsure else "")
                 + f"; per-round paired differences median {np.median(paired):+.2f} ms, "
                 f"{min(paired):+.2f} to {max(paired):+.2f}; p50 added {p50_added:+.2f} ms; "
                 + SETTING_TEXT[main_setting] + main_note))
        result.checks.append(Check(
            f"{label} p99 added by a hand-written minimal Envoy, and by the generated config over it ({what})",
            f"minimal {minimal:+.2f} ms ({m_low:+.2f} to {m_high:+.2f}); generated over minimal {extra:+.2f} ms "
            f"({e_low:+.2f} to {e_high:+.2f})", "(info)", None,
            note="the minimal Envoy is the least any Envoy sidecar adds on this machine; 95 % intervals"))
        for other in settings[1:]:
            o_rounds = data[other][kind]
            o_added, o_low, o_high = added_p99(units[other][kind], "sidecar", "direct")
            o_min, om_low, om_high = added_p99(units[other][kind], "minimal", "direct")
            direct_p99 = _p([v for part in o_rounds["direct"] for v in part], 99)
            result.checks.append(Check(
                f"{label} p99 added, {SETTING_TEXT[other]}, in the same rounds ({what})",
                f"sidecar {o_added:+.2f} ms ({o_low:+.2f} to {o_high:+.2f}); minimal {o_min:+.2f} ms "
                f"({om_low:+.2f} to {om_high:+.2f}); direct p99 {fmt_ms(direct_p99)}", "(info)", None,
                note="the same arms and rounds, the setting alternating within each round; 95 % intervals"))
        for setting in settings:
            for arm in ARMS:
                parts = data[setting][kind][arm]
                values = [v for part in parts for v in part]
                rows.append([label, arm] + ([setting] if len(settings) > 1 else []) + [
                    len(values), fmt_ms(_p(values, 50)), fmt_ms(_p(values, 90)), fmt_ms(_p(values, 99)),
                    fmt_ms(max(values) if values else float("nan")),
                    " / ".join(f"{_p(part, 99):.2f}" for part in parts)])
    for setting in settings:
        cpu_text = "; ".join(
            f"{name}: minimal {np.median(envoy_cpu[(setting, 'minimal', kind)]):.0f} µs, sidecar "
            f"{np.median(envoy_cpu[(setting, 'sidecar', kind)]):.0f} µs"
            for name, kind in (("unary call", "unary"), ("gRPC stream", "grpc"), ("SSE stream", "sse"))
            if envoy_cpu[(setting, "minimal", kind)] and envoy_cpu[(setting, "sidecar", kind)])
        result.checks.append(Check(
            "Envoy CPU time per call / stream (median over rounds)"
            + (f", {SETTING_TEXT[setting]}" if len(settings) > 1 else ""), cpu_text, "(info)", None,
            note="utime+stime of the Envoy process / calls; what Envoy itself costs, apart from waiting for its core"))
    if all(wake.values()):
        result.checks.append(Check(
            "cross-core wake-up round trip (a byte to a process on Envoy's core and back, 1 ms apart), p50 / p99",
            "; ".join(f"{SETTING_TEXT[st].split(' (')[0]}: {_p(wake[st], 50):.0f} / {_p(wake[st], 99):.0f} µs"
                      for st in SETTINGS), "(info)", None,
            note=f"{len(wake[SETTINGS[0]])} round trips per setting, before the rounds: two hand-offs to an idle "
                 "core, what each proxied request pays twice on top of Envoy's work"))
    if all(contention.values()):
        result.checks.append(Check(
            "other work on Envoy's core, and time stolen from it, per round",
            "; ".join(f"{st}: other work median {np.median(other):.1%}, max {max(other):.1%}; steal median "
                      f"{np.median(steal):.1%}, max {max(steal):.1%}"
                      for st in settings for other, steal in [list(zip(*contention[st], strict=True))]),
            "(info)", None,
            note="from /proc/stat for that core, less the Envoys' own CPU time: an Envoy that wakes while other "
                 "work runs there may wait a scheduler slice (about 6 ms here); per round in the JSON"))
    slow = {arm: [sum(v > SLOW_MS for v in part) for part in data[main_setting]["unary"][arm]] for arm in ARMS}
    result.checks.append(Check(
        f"gRPC unary calls over {SLOW_MS:.0f} ms, per arm (in how many rounds)",
        ", ".join(f"{sum(slow[a])} {a} ({sum(1 for c in slow[a] if c)})" for a in ARMS), "(info)", None,
        note="the stalls that decide a p99: on every arm alike (the machine or the client), or on the proxied arms "
             "only (Envoy or its core); per round in the table's p99 column"))
    result.checks.append(Check("gRPC unary calls failed", ", ".join(f"{unary_failed[a]} {a}" for a in ARMS), "0",
                               not any(unary_failed.values())))
    result.tables.append(report.table(
        "Latency (unary) and time to first token (streams), all rounds pooled",
        ["figure", "arm"] + (["idle CPUs"] if len(settings) > 1 else [])
        + ["samples", "p50", "p90", "p99", "max", "p99 per round (ms)"], rows))
    retries = envoy.stats("cluster.llm.upstream_rq_retry$").get("cluster.llm.upstream_rq_retry", 0)
    idle = cpuidle_facts()
    held = "; ".join(f"{st}: {qos_done.get(st, '')}" for st in settings)
    result.notes.append(
        f"{rounds_done} rounds, the three arms interleaved call by call and stream by stream in each"
        + (" (and, in each round, both idle-CPU settings, alternating which goes first)" if len(settings) > 1 else "")
        + f". Per round: {opts.unary_seconds:.1f} s of gRPC Predict at {rate:.0f} calls/s to each arm at once (open "
        "loop, grpcio futures; tick by tick one call to each arm, a third of a tick apart, the order rotating), then "
        f"{opts.streams_per_round} gRPC Generate streams and {opts.streams_per_round} SSE streams per arm one after "
        f"another, the arms taking turns ({STREAM_TOKENS} tokens, {STREAM_INTERVAL_MS} ms apart, first token at "
        f"once). Intervals resample blocks of {UNARY_BLOCK_SECONDS:.0f} s (unary) or {STREAM_BLOCK} streams per arm, "
        "every arm in each block. Client: Python (grpcio, http.client) with its garbage collector run between the "
        "phases, not during one, pinned "
        "with the emulator's instances to core 0; each Envoy on core 1 with one worker; HTTP/2 upstream for gRPC, "
        f"HTTP/1.1 for SSE. Idle CPUs: {held} (cpuidle driver {idle.get('driver') or 'none'}, states "
        f"{idle.get('states_exit_latency_us')}"
        + (f", guest_halt_poll_ns {idle['guest_halt_poll_ns']}" if "guest_halt_poll_ns" in idle else "")
        + f"). The sidecar retried {retries} calls. The machine is shared with other work: compare "
        "the arms, not the absolute figures; the Python client's own jitter is in every arm.")
    result.raw = {f"{kind}_rounds": {arm: [[round(v, 3) for v in part] for part in data[main_setting][kind][arm]]
                                     for arm in ARMS} for kind in KINDS}
    for other in settings[1:]:
        result.raw[f"{other}_rounds"] = {kind: {arm: [[round(v, 3) for v in part] for part in data[other][kind][arm]]
                                                for arm in ARMS} for kind in KINDS}
    result.raw["settings"] = list(settings)
    result.raw["latency_qos"] = qos_done
    result.raw["cpuidle"] = idle
    result.raw["envoy_core_other_steal"] = {st: [[round(a, 4), round(b, 4)] for a, b in values]
                                            for st, values in contention.items()}
    result.raw["wake_round_trip_us"] = {st: [round(v, 1) for v in values] for st, values in wake.items()}
    result.raw["envoy_cpu_us"] = {f"{st}/{arm}/{kind}": values for (st, arm, kind), values in envoy_cpu.items()}
    return result


def main(argv: list[str] | None = None) -> int:
    """Scenario 8 alone (`python -m bench.scenarios.streaming [--quick]`): writes its JSON beside make bench's
    results and prints its tables in markdown; docs/benchmarks.md is not touched (its section is edited by
    hand from this output, so a re-run of one scenario does not re-render everyone's page)."""
    import argparse
    import json
    import tempfile
    from pathlib import Path

    from rich.console import Console

    from bench import env
    from bench.run import _on_term, results_dir, run_scenario

    parser = argparse.ArgumentParser(prog="python -m bench.scenarios.streaming", description=main.__doc__)
    parser.add_argument("--quick", action="store_true", help="3 short rounds")
    parser.add_argument("--latency-qos", choices=list(QOS_CHOICES), default=None,
                        help=f"hold /dev/cpu_dma_latency at 0 while measuring (on, the default; {QOS_ENV} too), "
                             "leave the machine as it is (off), or both in each round (ab)")
    parser.add_argument("--rounds", type=int, help="rounds (default 10, quick 3)")
    parser.add_argument("--streams", type=int, help="streams per round, arm and kind (default 800, quick 100)")
    parser.add_argument("--unary-seconds", type=float,
                        help="seconds of unary calls per round, every arm at once (default 12)")
    args = parser.parse_args(argv)
    base = Options.default(args.quick)
    options = Options(args.rounds or base.rounds, args.streams or base.streams_per_round,
                      args.unary_seconds if args.unary_seconds is not None else base.unary_seconds,
                      args.latency_qos or base.qos, base.max_seconds)
    # A harness timeout's SIGTERM unwinds like Ctrl-C, so the scenario's finally blocks stop its Envoys.
    signal.signal(signal.SIGTERM, _on_term)
    scenario = types.ModuleType(__name__)  # this module with the options bound, as run_scenario takes one
    scenario.NAME, scenario.TITLE = NAME, TITLE  # type: ignore[attr-defined]
    scenario.run = functools.partial(run, options=options)  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory(prefix="bench-streaming-") as tmp:
        ctx = Ctx(Path(tmp), env.IMG_DIR, args.quick, Console(stderr=True))
        outcome = run_scenario(scenario, ctx)
    outcome.raw["ran_at"] = env.machine_facts_date()
    out = results_dir(args.quick)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{NAME}.json").write_text(json.dumps(outcome.to_json(), indent=1, default=str))
    print(report.md_table(["figure", "measured", "target", "verdict", "note"],
                          [[c.what, c.value, c.target, c.status, c.note] for c in report.ordered(outcome.checks)]))
    for table in outcome.tables:
        print(f"\n**{table.title}**\n\n" + report.md_table(table.columns, table.rows))
    print(f"\n{' '.join(outcome.notes)}\n\nwall {outcome.seconds:.0f} s, load average at start / end "
          f"{outcome.raw['loadavg']}; commit {env.machine_facts().get('git_commit')}; {outcome.raw['ran_at']}")
    return 1 if outcome.error else 0


if __name__ == "__main__":
    raise SystemExit(main())
