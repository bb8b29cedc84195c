"""Scenario 8, gRPC and token streams: direct, a hand-written minimal Envoy, and the sidecar Envoy, in one run.

- gRPC unary: Predict at a fixed rate, open loop (each call is issued at its scheduled time with
  grpcio's futures, latency counted from that time, so a slow answer cannot delay the next call).
- Time to first token (TTFT): gRPC server-streaming Generate and SSE (`/stream`), one stream after
  another over a kept-alive connection; TTFT is from sending the request to the first token's bytes.

Instances are the emulator's (a child process on core 0, with this client); the Envoys on core 1, one
worker each: the sidecar's config rendered by the agent's EnvoyFileSink with the default service policy,
the minimal one `bench/minimal_envoy.py` (a listener, the router, one STATIC cluster; HTTP/2 upstream for
gRPC), which is the least any Envoy sidecar costs (issue 18). Rounds run the three arms next to each
other, rotating which goes first, so drift on the shared machine hits every arm alike; each figure is the
p99 of all rounds pooled, with a 95 % interval from resampling whole rounds (the machine's drift between
rounds is in it): an interval that straddles the target is INCONCLUSIVE, not a PASS or a MISS.

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
import http.client
import os
import random
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
BOOTSTRAP = 2000  # resamples of the rounds
OPTIONS = [("grpc.enable_http_proxy", 0)]
# "held": /dev/cpu_dma_latency at 0 for the measurement (idle CPUs poll); "off": the machine's default.
SETTINGS = ("held", "off")
QOS_CHOICES = {"on": ("held",), "off": ("off",), "ab": ("held", "off")}
QOS_ENV = "BENCH_LATENCY_QOS"


@dataclass(frozen=True)
class Options:
    rounds: int
    streams_per_round: int
    unary_seconds: float
    qos: str = "on"  # a key of QOS_CHOICES

    @classmethod
    def default(cls, quick: bool) -> Options:
        qos = os.environ.get(QOS_ENV, "on")
        if qos not in QOS_CHOICES:
            raise ValueError(f"{QOS_ENV}={qos!r}: expected one of {', '.join(QOS_CHOICES)}")
        return cls(3, 60, 2.0, qos) if quick else cls(8, 250, 6.0, qos)


def _stub(channel: grpc.Channel, method: str, stream: bool) -> Any:
    make = channel.unary_stream if stream else channel.unary_unary
    return make(method, request_serializer=struct_pb2.Struct.SerializeToString,
                response_deserializer=struct_pb2.Struct.FromString)


def unary_round(address: str, rate: float, seconds: float) -> tuple[list[float], int]:
    """Open-loop Predict calls at `rate`/s for `seconds`; (latencies in ms, failures)."""
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    with grpc.insecure_channel(address, options=OPTIONS) as channel:
        predict = _stub(channel, PREDICT, stream=False)
        predict(to_struct({}), timeout=5)  # connect outside the measurement
        pending = []
        start = time.perf_counter()
        for index in range(int(rate * seconds)):
            due = start + index / rate
            while (now := time.perf_counter()) < due:
                time.sleep(min(0.0005, due - now))
            future = predict.future(to_struct({"n": index}), timeout=5)

            def done(f: Any, due: float = due) -> None:
                elapsed = (time.perf_counter() - due) * 1000.0
                with lock:
                    if f.exception() is None:
                        latencies.append(elapsed)
                    else:
                        failures[0] += 1

            future.add_done_callback(done)
            pending.append(future)
        for future in pending:
            future.exception(timeout=10)
    return latencies, failures[0]


def grpc_ttft_round(address: str, streams: int) -> list[float]:
    out = []
    with grpc.insecure_channel(address, options=OPTIONS) as channel:
        generate = _stub(channel, GENERATE, stream=True)
        list(generate(to_struct({"tokens": 1}), timeout=5))  # connect outside the measurement
        for _ in range(streams):
            started = time.perf_counter()
            call = generate(to_struct({"tokens": 3, "interval_ms": 2}), timeout=10)
            iterator = iter(call)
            next(iterator)
            out.append((time.perf_counter() - started) * 1000.0)
            for _ in iterator:
                pass
    return out


def sse_ttft_round(host: str, port: int, streams: int) -> list[float]:
    out = []
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        for index in range(streams + 1):  # the first one connects, outside the measurement
            started = time.perf_counter()
            conn.request("GET", "/stream?tokens=3&interval_ms=2")
            response = conn.getresponse()
            seen = b""
            for _ in range(1000):
                seen += response.read1(65536)
                if b"data: {" in seen:
                    break
            if index:
                out.append((time.perf_counter() - started) * 1000.0)
            response.read()
            if response.status != 200:
                raise RuntimeError(f"SSE stream answered HTTP {response.status}")
    finally:
        conn.close()
    return out


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


def added_p99(rounds: dict[str, list[list[float]]], arm: str, base: str, seed: int = 1) -> tuple[float, float, float]:
    """p99 of `arm` minus p99 of `base`, all rounds pooled, and a 95 % interval from resampling whole rounds
    (the same rounds for both arms: they ran next to each other)."""
    def diff(indices: list[int]) -> float:
        return (_p([v for i in indices for v in rounds[arm][i]], 99)
                - _p([v for i in indices for v in rounds[base][i]], 99))

    count = len(rounds[arm])
    rng = random.Random(seed)
    draws = sorted(diff([rng.randrange(count) for _ in range(count)]) for _ in range(BOOTSTRAP))
    return diff(list(range(count))), draws[int(0.025 * BOOTSTRAP)], draws[int(0.975 * BOOTSTRAP) - 1]


def verdict(low: float, high: float, target: float) -> tuple[bool, bool]:
    """(passed, inconclusive) for "added ≤ target": decided only when the whole interval is on one side."""
    return high <= target, low <= target < high


SETTING_TEXT = {"held": "with /dev/cpu_dma_latency held at 0 (idle CPUs poll)",
                "off": "without the latency setting (idle CPUs halt)"}


def run(ctx: Ctx, options: Options | None = None) -> ScenarioResult:
    result = ScenarioResult(NAME, TITLE)
    opts = options or Options.default(ctx.quick)
    settings = QOS_CHOICES[opts.qos]
    # 100 calls/s: well inside what the Python client and instance serve on one shared core, so the
    # instance side does not queue and what differs between the arms is the proxy.
    rate = 100.0

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
    arms = {"direct": (llm.address, chat.ip, chat.port),
            "minimal": (f"127.0.0.1:{minimal_grpc_port}", "127.0.0.1", minimal_sse_port),
            "sidecar": (f"127.0.0.1:{grpc_port}", "127.0.0.1", sse_port)}
    # The Envoy process each (arm, kind) goes through, for its CPU time per call or stream.
    proxies = {("sidecar", "unary"): envoy.pid, ("sidecar", "grpc"): envoy.pid, ("sidecar", "sse"): envoy.pid,
               ("minimal", "unary"): minimal_grpc.pid, ("minimal", "grpc"): minimal_grpc.pid,
               ("minimal", "sse"): minimal_sse.pid}

    undo = _pin(LOADGEN_CPU)
    wake: dict[str, list[float]] = {st: [] for st in settings}
    try:
        ctx.step("the cross-core wake-up probe")
        for block in range(4):  # settings alternating, so drift hits both alike
            for setting in (settings if block % 2 == 0 else settings[::-1]):
                with cpu_latency_qos(0 if setting == "held" else None):
                    wake[setting].extend(wake_round_trips(100 if ctx.quick else 500))
    except OSError as exc:  # the probe explains the figures; it is not one of them
        ctx.log(f"wake-up probe failed: {exc}")
    # per setting, kind and arm: one list of values per round
    data: dict[str, dict[str, dict[str, list[list[float]]]]] = {
        st: {k: {a: [] for a in ARMS} for k in KINDS} for st in settings}
    unary_failed = dict.fromkeys(ARMS, 0)
    envoy_cpu: dict[tuple[str, str, str], list[float]] = {
        (st, arm, kind): [] for st in settings for arm, kind in proxies}  # µs per call or stream
    qos_done: dict[str, str] = {}
    envoy_pids = sorted(set(proxies.values()))
    # per setting, one (other work, steal) share of Envoy's core per round
    contention: dict[str, list[tuple[float, float]]] = {st: [] for st in settings}

    def measured(setting: str, kind: str, arm: str, work: Callable[[], list[float]]) -> None:
        pid = proxies.get((arm, kind))
        cpu0 = proc_cpu_seconds(pid) if pid else 0.0
        values = work()
        if pid and values:
            envoy_cpu[(setting, arm, kind)].append((proc_cpu_seconds(pid) - cpu0) / len(values) * 1e6)
        data[setting][kind][arm].append(values)
    try:
        for arm in ARMS:  # connections and code paths warm, outside the measurement
            grpc_ttft_round(arms[arm][0], 10)
            sse_ttft_round(arms[arm][1], arms[arm][2], 10)
        for index in range(opts.rounds):
            order = ARMS[index % len(ARMS):] + ARMS[:index % len(ARMS)]
            for setting in (settings if index % 2 == 0 else settings[::-1]):
                # Held for this part of the round only, for every arm in it alike; closed at its end.
                with cpu_latency_qos(0 if setting == "held" else None) as done:
                    qos_done[setting] = done
                    core0, envoys0 = _cpu_times(ENVOY_CPU), sum(proc_cpu_seconds(p) for p in envoy_pids)
                    for arm in order:
                        grpc_address, sse_host, sse_at = arms[arm]
                        label = f"round {index + 1}/{opts.rounds}" + (f", {setting}" if len(settings) > 1 else "")
                        ctx.step(f"{label}: {arm}: gRPC unary at {rate:.0f}/s")

                        def unary_work(address: str = grpc_address, arm: str = arm) -> list[float]:
                            latencies, failed = unary_round(address, rate, opts.unary_seconds)
                            unary_failed[arm] += failed
                            return latencies

                        measured(setting, "unary", arm, unary_work)
                        ctx.step(f"{label}: {arm}: gRPC and SSE time to first token")
                        measured(setting, "grpc", arm,
                                 functools.partial(grpc_ttft_round, grpc_address, opts.streams_per_round))
                        measured(setting, "sse", arm,
                                 functools.partial(sse_ttft_round, sse_host, sse_at, opts.streams_per_round))
                    envoys = sum(proc_cpu_seconds(p) for p in envoy_pids) - envoys0
                    contention[setting].append(core_share(core0, _cpu_times(ENVOY_CPU), envoys))
    finally:
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
        pooled = {arm: [v for part in rounds[arm] for v in part] for arm in ARMS}
        added, low, high = added_p99(rounds, "sidecar", "direct")
        passed, unsure = verdict(low, high, target)
        p50_added = _p(pooled["sidecar"], 50) - _p(pooled["direct"], 50)
        minimal, m_low, m_high = added_p99(rounds, "minimal", "direct")
        extra, e_low, e_high = added_p99(rounds, "sidecar", "minimal")
        result.checks.append(Check(
            f"{label} p99 added by the sidecar ({what})",
            f"{added:+.2f} ms ({fmt_ms(_p(pooled['direct'], 99))} -> {fmt_ms(_p(pooled['sidecar'], 99))})",
            f"≤ {target:.0f} ms", passed, inconclusive=unsure,
            note=f"all rounds pooled; 95 % interval {low:+.2f} to {high:+.2f} ms (resampled rounds)"
                 + ("; the interval straddles the target" if unsure else "") + f"; p50 added {p50_added:+.2f} ms; "
                 + SETTING_TEXT[main_setting] + main_note))
        result.checks.append(Check(
            f"{label} p99 added by a hand-written minimal Envoy, and by the generated config over it ({what})",
            f"minimal {minimal:+.2f} ms ({m_low:+.2f} to {m_high:+.2f}); generated over minimal {extra:+.2f} ms "
            f"({e_low:+.2f} to {e_high:+.2f})", "(info)", None,
            note="the minimal Envoy is the least any Envoy sidecar adds on this machine; 95 % intervals"))
        for other in settings[1:]:
            o_rounds = data[other][kind]
            o_added, o_low, o_high = added_p99(o_rounds, "sidecar", "direct")
            o_min, om_low, om_high = added_p99(o_rounds, "minimal", "direct")
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
                      for st in settings), "(info)", None,
            note=f"{len(wake[settings[0]])} round trips per setting, before the rounds: two hand-offs to an idle "
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
        f"{opts.rounds} rounds, the three arms next to each other in each, rotating which goes first"
        + (" (and, in each round, both idle-CPU settings, alternating which goes first)" if len(settings) > 1 else "")
        + f". Per round and arm: {opts.unary_seconds:.1f} s of gRPC Predict at {rate:.0f} calls/s (open loop, grpcio "
        f"futures), then {opts.streams_per_round} gRPC Generate streams and {opts.streams_per_round} SSE streams one "
        "after another (3 tokens, 2 ms apart, first token at once). Client: Python (grpcio, http.client), pinned "
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
    from bench.run import results_dir, run_scenario

    parser = argparse.ArgumentParser(prog="python -m bench.scenarios.streaming", description=main.__doc__)
    parser.add_argument("--quick", action="store_true", help="3 short rounds")
    parser.add_argument("--latency-qos", choices=list(QOS_CHOICES), default=None,
                        help=f"hold /dev/cpu_dma_latency at 0 while measuring (on, the default; {QOS_ENV} too), "
                             "leave the machine as it is (off), or both in each round (ab)")
    parser.add_argument("--rounds", type=int, help="rounds (default 8, quick 3)")
    parser.add_argument("--streams", type=int, help="streams per round, arm and kind (default 250, quick 60)")
    parser.add_argument("--unary-seconds", type=float, help="seconds of unary calls per round and arm (default 6)")
    args = parser.parse_args(argv)
    base = Options.default(args.quick)
    options = Options(args.rounds or base.rounds, args.streams or base.streams_per_round,
                      args.unary_seconds if args.unary_seconds is not None else base.unary_seconds,
                      args.latency_qos or base.qos)
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
