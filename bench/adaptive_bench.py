"""Adaptive load balancing vs Envoy's built-in policies: `python -m bench.adaptive_bench [--quick]`.

One emulator (4 inference instances, one request at a time each, constant service time), one real Envoy,
and one listener per policy over the same instances, all rendered by the agent's EnvoyFileSink:

- `default`:  least_request as the agent renders it without adaptive (Envoy's P2C);
- `oracle`:   least_request over the fast instances only (what a perfect operator would configure);
- `adaptive`: least_request + `lb.adaptive`, weights from the agent's own feedback loop (AdaptiveRunner,
  run in this process exactly as the agent runs it), published through the same EDS files.

Load is open loop (vegeta: a fixed send schedule whatever the responses do, latency measured from the
scheduled send, so coordinated omission does not hide queues), or, without vegeta, an asyncio/aiohttp
generator that measures from each request's intended send time. Runs of the policies are interleaved
and repeated, and percentiles are taken over the pooled requests of all repetitions. The machine may
be shared: the load average is recorded beside each scenario.

Writes bench/results/adaptive.json and docs/img/adaptive-*.png. Every child process is stopped at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml
from modelarts_emulator.client import EmulatorAdmin

from agent.adaptive.runner import AdaptiveRunner
from agent.config import AgentConfig, parse_config
from agent.envoy.ads_bootstrap import AdsBootstrap, build_ads_bootstrap
from agent.envoy.bootstrap import build_bootstrap
from agent.envoy.serialize import to_yaml
from agent.model import Endpoint, ServiceSnapshot, Snapshot
from agent.sinks.envoy.files import EnvoyFileSink
from agent.sinks.xds.sink import XdsSink
from bench.adaptive_report import update_doc
from bench.env import machine_facts_date, taskset_prefix
from bench.scenarios import http_json, http_text, proc_cpu_seconds, wait_for
from demo.processes import ChildProcess

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "adaptive.json"
RESULTS_ADS = REPO / "bench" / "results" / "adaptive-ads.json"
IMG_DIR = REPO / "docs" / "img"
BENCHMARKS_DOC = REPO / "docs" / "benchmarks.md"
VEGETA = Path(os.environ.get("MODELARTS_AGENT_CACHE") or REPO / ".cache") / "bench" / "bin" / "vegeta"
ENVOY = Path(sys.executable).parent / "envoy"

FAST_MS, SLOW_MS, DEGRADED_MS = 10.0, 50.0, 60.0
LOW_RATE, HIGH_RATE = 150.0, 280.0
# Two cores: load generator + instances on core 0, Envoy + this process (the agent's feedback loop) on core 1.
LOAD_CPU, PROXY_CPU = "0", "1"


# --- small helpers ---------------------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports (all held open until all are chosen, so none repeats)."""
    import socket

    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()










def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def fmt_ms(value: float) -> str:
    return "n/a" if math.isnan(value) else (f"{value:,.0f} ms" if value >= 100 else f"{value:.1f} ms")


# --- load ------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """Per-request results of one open-loop run: intended send time (s), latency (s), status, instance."""

    policy: str
    rate: float
    started: float = 0.0
    sent: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    status: list[int] = field(default_factory=list)
    instance: list[str] = field(default_factory=list)
    envoy_cpu: float = 0.0
    rounds_p99: list[float] = field(default_factory=list)  # p99 (ms) of each segment, when pooled
    rounds_shares: list[dict[str, float]] = field(default_factory=list)  # each segment's shares, when pooled

    def extend(self, other: Run) -> None:
        self.sent += other.sent
        self.latency += other.latency
        self.status += other.status
        self.instance += other.instance
        self.envoy_cpu += other.envoy_cpu

    @property
    def errors(self) -> int:
        return sum(1 for s in self.status if not 200 <= s < 300)

    def p(self, q: float, window: tuple[float, float] | None = None) -> float:
        """Latency percentile in ms over all requests, or those sent in [start, end) (absolute times)."""
        if window is None:
            return percentile(self.latency, q) * 1000
        return percentile([lat for t, lat in zip(self.sent, self.latency, strict=True)
                           if window[0] <= t < window[1]], q) * 1000

    def shares(self) -> dict[str, float]:
        counts = Counter(i for i, s in zip(self.instance, self.status, strict=True) if i and 200 <= s < 300)
        total = sum(counts.values()) or 1
        return {k: counts[k] / total for k in sorted(counts)}

    def per_second_p99(self, origin: float) -> list[tuple[float, float]]:
        buckets: dict[int, list[float]] = {}
        for t, lat in zip(self.sent, self.latency, strict=True):
            buckets.setdefault(int(t - origin), []).append(lat)
        return [(second + 0.5, percentile(values, 99) * 1000) for second, values in sorted(buckets.items())]

    def summary(self) -> dict[str, Any]:
        return {"requests": len(self.latency), "errors": self.errors,
                **{f"p{q:g}_ms": round(self.p(q), 2) for q in (50, 90, 99, 99.9)},
                "max_ms": round(self.p(100), 2), "shares": {k: round(v, 4) for k, v in self.shares().items()},
                "p99_ms_per_segment": self.rounds_p99,
                **({"shares_per_segment": self.rounds_shares} if self.rounds_shares else {}),
                "envoy_cpu_ms_per_1k_requests": round(1e6 * self.envoy_cpu / max(len(self.latency), 1), 1)}


class Load:
    """Open-loop load: vegeta when built (scripts/bench/build-tools.sh), else an asyncio generator."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.tool = "vegeta" if os.access(VEGETA, os.X_OK) else "asyncio"

    def run(self, url: str, rate: float, seconds: float, policy: str) -> Run:
        return self._vegeta(url, rate, seconds, policy) if self.tool == "vegeta" \
            else self._asyncio(url, rate, seconds, policy)

    def _vegeta(self, url: str, rate: float, seconds: float, policy: str) -> Run:
        targets = self.workdir / "targets.txt"
        targets.write_text(f"GET {url}\n")
        out = self.workdir / f"{policy}.bin"
        started = time.time()
        proc = subprocess.run([*taskset_prefix(LOAD_CPU), str(VEGETA), "attack", f"-targets={targets}",
                               f"-rate={rate:g}/1s", f"-duration={seconds:g}s", "-timeout=60s",
                               f"-output={out}"], capture_output=True, timeout=seconds + 120, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"vegeta failed: {proc.stderr.decode(errors='replace')[-500:]}")
        encoded = subprocess.run([str(VEGETA), "encode", "--to=json", str(out)], capture_output=True,
                                 timeout=120, check=True).stdout
        run = Run(policy, rate, started)
        for line in encoded.splitlines():
            rec = json.loads(line)
            run.sent.append(_rfc3339(rec["timestamp"]))
            run.latency.append(rec["latency"] / 1e9)
            run.status.append(int(rec.get("code") or 0))
            headers = rec.get("headers") or {}
            value = headers.get("X-Instance-Id") or [""]
            run.instance.append(value[0] if isinstance(value, list) and value else "")
        out.unlink(missing_ok=True)
        return run

    def _asyncio(self, url: str, rate: float, seconds: float, policy: str) -> Run:
        import aiohttp

        run = Run(policy, rate, time.time())

        async def one(session: aiohttp.ClientSession, intended: float, loop_origin: float) -> None:
            delay = intended - (asyncio.get_running_loop().time() - loop_origin)
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                async with session.get(url) as resp:
                    await resp.read()
                    status, instance = resp.status, resp.headers.get("X-Instance-Id", "")
            except (TimeoutError, aiohttp.ClientError):
                status, instance = 0, ""
            # Latency from the intended send time: a late send (a busy generator) counts as waiting.
            run.sent.append(run.started + intended)
            run.latency.append(asyncio.get_running_loop().time() - loop_origin - intended)
            run.status.append(status)
            run.instance.append(instance)

        async def main() -> None:
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as s:
                origin = asyncio.get_running_loop().time()
                count = int(rate * seconds)
                await asyncio.gather(*(one(s, i / rate, origin) for i in range(count)))

        asyncio.run(main())
        return run


def _rfc3339(text: str) -> float:
    main, _, rest = text.partition(".")
    digits = "".join(ch for ch in rest[:9] if ch.isdigit()) if rest else ""
    tz = rest[len(digits):] if rest else text[len(main):]
    base = datetime.datetime.fromisoformat(main + ("+00:00" if tz in ("Z", "") else tz))
    return base.timestamp() + (float("0." + digits) if digits else 0.0)


# --- the bench rig ---------------------------------------------------------------------------------------


class Rig:
    """Emulator + Envoy + file sink + the adaptive runner; `close()` stops every child."""

    POLICIES: Mapping[str, dict[str, Any]] = {
        # Envoy's own policies: adaptive explicitly off (it is on by default for least_request).
        "default": {"policy": "least_request", "adaptive": False},
        "oracle": {"policy": "least_request", "adaptive": False},
        "adaptive": {"policy": "least_request", "adaptive": True},
        "choice4": {"policy": "least_request", "choice_count": 4, "adaptive": False},
        # Weights the bench sets itself (StaticWeights): the ideal static split, or an oracle that knows
        # the true service times as they change.
        "static": {"policy": "least_request", "adaptive": False},
    }

    def __init__(self, workdir: Path, transport: str = "files", concurrency: int = 1) -> None:
        self.workdir = workdir
        self.concurrency = concurrency  # requests each instance serves at once (the rest queue there)
        self.oracle_out: set[str] = set()  # instances the oracle listener leaves out (default: the slow one)
        self.transport = transport  # "files" (EDS files) or "ads" (the agent's xDS server, SotW)
        self.xds: XdsSink | None = None
        self.children: list[ChildProcess] = []
        self.load = Load(workdir)
        self.runner: AdaptiveRunner | None = None
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        scenario = {"seed": 7, "services": [{
            "name": "llm", "service_id": "llm", "instances": 4, "concurrency": self.concurrency,
            "latency": {"base_ms": FAST_MS, "jitter_ms": 0, "distribution": "constant"}}]}
        (self.workdir / "emulator.yaml").write_text(yaml.safe_dump(scenario))
        ready = self.workdir / "emulator.json"
        emulator = ChildProcess("emulator", [*taskset_prefix(LOAD_CPU), sys.executable, "-m", "modelarts_emulator",
                                             "--log-format", "text", "--config", str(self.workdir / "emulator.yaml"),
                                             "--ready-file", str(ready)], self.workdir)
        self.children.append(emulator.start())
        emulator.wait_until(ready.exists, 60, "emulator ready")
        self.emulator = EmulatorAdmin(json.loads(ready.read_text())["admin_url"])
        self.instances = sorted(self.emulator.instances(), key=lambda i: i.instance_id)
        self.slow = self.instances[-1]
        self.oracle_out = {self.slow.instance_id}
        *listen, admin_port, xds_port = free_ports(len(self.POLICIES) + 2)
        self.ports = dict(zip(self.POLICIES, listen, strict=True))
        # Listeners on an address of their own: on a shared machine another process may bind the same port
        # on 127.0.0.1 between our pick and Envoy's bind, and with SO_REUSEPORT both binds succeed silently.
        self.listen_ip = f"127.{random.randint(64, 250)}.{random.randint(1, 250)}.{random.randint(1, 250)}"
        self.config: AgentConfig = parse_config({
            "modelarts": {"iam_url": "http://127.0.0.1:9", "modelarts_url": "http://127.0.0.1:9", "project_id": "p"},
            "auth": {"mode": "token"},
            "discovery": {"allowed_cidrs": ["127.0.0.0/8"]},
            "services": [{"name": name, "service_id": f"sid-{name}", "listen_port": self.ports[name], "lb": lb,
                          "listen_address": self.listen_ip, "access_log": {"enabled": False}}
                         for name, lb in self.POLICIES.items()],
            "envoy": {"output_dir": str(self.workdir / "envoy"), "admin_port": admin_port},
            "xds": {"enabled": self.transport == "ads", "address": "127.0.0.1", "port": xds_port},
        }, "adaptive-bench")
        bootstrap = self.workdir / "bootstrap.yaml"
        self.sink: EnvoyFileSink | XdsSink
        if self.transport == "ads":
            self.sink = self.xds = XdsSink(self.config)
            self.xds.start()
            bootstrap.write_text(to_yaml(build_ads_bootstrap(AdsBootstrap(
                address=f"127.0.0.1:{xds_port}", node_id="adaptive-bench", admin_port=admin_port))))
        else:
            self.sink = EnvoyFileSink(self.config)
            bootstrap.write_text(to_yaml(build_bootstrap(self.config.envoy)))
        self.sink.publish(self._snapshot())
        self.weight_sink = StaticWeights(self.sink)
        envoy = ChildProcess("envoy", [*taskset_prefix(PROXY_CPU), str(ENVOY), "-c", str(bootstrap),
                                       "--disable-hot-restart", "--concurrency", "1", "--log-level", "warn",
                                       "--drain-time-s", "1"], self.workdir)
        self.children.append(envoy.start())
        self.envoy = envoy
        admin = f"http://127.0.0.1:{self.config.envoy.admin_port}"
        envoy.wait_until(lambda: http_text(admin + "/ready", 0.5).strip() == "LIVE", 30, "Envoy ready")
        hosts = sum(len(svc.endpoints) for svc in self._snapshot().services.values())
        wait_for(lambda: http_text(admin + "/clusters").count("::rq_active::") >= hosts, 30, "Envoy hosts")
        # Every listener bound on its own port: another process taking a port between our pick and Envoy's
        # bind would send one policy's load somewhere else, silently.
        wait_for(lambda: self._listening(admin), 30, "Envoy listening on every policy's port")
        # The agent's feedback loop, exactly as AgentRuntime runs it (in this process, pinned with Envoy).
        self.runner = AdaptiveRunner(lambda: [self.weight_sink])
        self.runner.apply(self.config)

    def fresh_loop(self) -> None:
        """A new feedback loop with nothing learnt, and the adaptive listener back at equal weights: what a
        freshly started agent has. Each matrix cell starts from one, so no cell's history (a host floored in
        the previous cell, a CV^2 or a prior from another load) helps or hurts the next."""
        if self.runner is not None:
            self.runner.stop()
        self.weight_sink.update_weights({})
        self.runner = AdaptiveRunner(lambda: [self.weight_sink])
        self.runner.apply(self.config)

    def _listening(self, admin: str) -> bool:
        data = http_json(admin + "/listeners?format=json")
        bound = {entry["name"]: entry.get("local_address", {}).get("socket_address", {}).get("port_value")
                 for entry in data.get("listener_statuses", [])}
        return all(bound.get(name) == port for name, port in self.ports.items())


    def _snapshot(self) -> Snapshot:
        def endpoints(name: str) -> tuple[Endpoint, ...]:
            chosen = [i for i in self.instances if name != "oracle" or i.instance_id not in self.oracle_out]
            return tuple(sorted(Endpoint(ip=i.ip, port=i.port) for i in chosen))

        services = {spec.name: ServiceSnapshot(spec.name, spec.service_id, synced=True, endpoints=endpoints(spec.name))
                    for spec in self.config.services}
        return Snapshot(version=1, services=MappingProxyType(dict(sorted(services.items()))))

    # -- controls ---------------------------------------------------------------------------------------

    def set_latency(self, instance_id: str, ms: float, distribution: str = "constant") -> None:
        """Constant `ms`, or exponential / lognormal (sigma 0.5) service times with mean `ms`."""
        if distribution in ("exponential", "lognormal"):
            self.emulator.set_latency(instance_id, 0.0, ms, distribution)
        else:
            self.emulator.set_latency(instance_id, ms, 0.0, "constant")

    def set_oracle(self, left_out: set[str]) -> None:
        """The oracle listener serves every instance but these (republished as EDS)."""
        self.oracle_out = set(left_out)
        self.sink.publish(self._snapshot())

    def address_of(self, instance_id: str) -> str:
        info = next(i for i in self.instances if i.instance_id == instance_id)
        return f"{info.ip}:{info.port}"

    def weights(self) -> dict[str, int]:
        assert self.runner is not None
        return dict(self.runner.table.get("adaptive") or {})

    def loop_state(self) -> str:
        """The feedback loop's own view, for the log: a weight that never moves must be explainable."""
        loop = self.runner.loop if self.runner else None
        if loop is None:
            return "loop not running"
        spans = [round(r.get("in_flight", 0.0), 2) for r in loop.table.rows("adaptive")]  # type: ignore[arg-type,call-overload]
        return (f"loop reads {loop.reads_ok} ok / {loop.reads_failed} failed, alive {loop.running}, "
                f"mean in flight {spans}")

    def idle(self, timeout: float = 120.0) -> None:
        """Wait until no instance has requests in service or queued (the previous run fully drained)."""
        wait_for(lambda: all(i.in_flight == 0 and i.queued == 0 for i in self.emulator.instances()), timeout,
                 "instances idle", interval=0.2)
        time.sleep(0.5)

    def run(self, policy: str, rate: float, seconds: float,
            during: Callable[[float], None] | None = None) -> Run:
        """One open-loop run against one policy's listener; `during(start)` runs alongside it."""
        self.idle()
        cpu = proc_cpu_seconds(self.envoy.proc.pid) if self.envoy.proc else 0.0
        worker = None
        if during is not None:
            start = time.time()
            worker = threading.Thread(target=during, args=(start,), daemon=True)
            worker.start()
        served = self.cluster_requests(policy)
        result = self.load.run(f"http://{self.listen_ip}:{self.ports[policy]}/v1/infer", rate, seconds, policy)
        if worker is not None:
            worker.join(timeout=seconds + 60)
        result.envoy_cpu = (proc_cpu_seconds(self.envoy.proc.pid) if self.envoy.proc else 0.0) - cpu
        reached = self.cluster_requests(policy) - served
        if reached < 0.95 * (len(result.latency) - result.errors):
            raise RuntimeError(f"{policy}: only {reached} of {len(result.latency)} requests went through its Envoy "
                               "cluster; is another listener or process on the same address and port?")
        return result

    def cluster_requests(self, policy: str) -> int:
        """Requests Envoy sent through this policy's cluster: proof that the load hit the right listener."""
        admin = f"http://127.0.0.1:{self.config.envoy.admin_port}"
        pattern = urllib.parse.quote(f"^cluster\\.{policy}\\.upstream_rq_total$")
        text = http_text(f"{admin}/stats?filter={pattern}")
        return sum(int(line.rsplit(":", 1)[1]) for line in text.splitlines() if ":" in line)

    def close(self) -> None:
        if self.runner is not None:
            self.runner.stop()
        for child in reversed(self.children):
            with contextlib.suppress(Exception):
                child.stop()
        if self.xds is not None:
            self.xds.close(grace=0)
        with contextlib.suppress(Exception):
            self.emulator.close()


class StaticWeights:
    """The sink the adaptive runner publishes to, with the `static` listener's weights merged in."""

    def __init__(self, sink: EnvoyFileSink | XdsSink) -> None:
        self.sink = sink
        self.static: dict[str, int] = {}
        self._adaptive: dict[str, dict[str, int]] = {}
        self._lock = threading.Lock()

    def update_weights(self, weights: Mapping[str, Mapping[str, int]]) -> None:
        with self._lock:
            self._adaptive = {k: dict(v) for k, v in weights.items()}
            self._push()

    def set_static(self, weights: Mapping[str, int]) -> None:
        with self._lock:
            self.static = dict(weights)
            self._push()

    def _push(self) -> None:
        self.sink.update_weights({**self._adaptive, **({"static": self.static} if self.static else {})})


# --- scenarios -------------------------------------------------------------------------------------------


@dataclass
class Check:
    what: str
    value: float
    target: float
    passed: bool
    detail: str = ""
    at_least: bool = False  # the target is a floor (value >= target), not a ceiling

    def as_dict(self) -> dict[str, Any]:
        return {"what": self.what, "value": round(self.value, 3), "target": round(self.target, 3),
                "status": "PASS" if self.passed else "MISS", "detail": self.detail,
                **({"target_is": "floor"} if self.at_least else {})}


@dataclass
class Scenario:
    name: str
    title: str
    checks: list[Check] = field(default_factory=list)
    policies: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    load_average: tuple[float, float] = (0.0, 0.0)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "checks": [c.as_dict() for c in self.checks],
                "policies": self.policies, "notes": self.notes, "load_average_before_after": self.load_average,
                **self.extra}


def interleaved(rig: Rig, policies: Sequence[str], rate: float, segment: float, rounds: int,
                log: Callable[[str], None], measure: Callable[[str, int], Run] | None = None) -> dict[str, Run]:
    """`rounds` rounds of one `segment`-second run per policy, the order rotating every round, pooled.

    Short interleaved segments spread the bursts of a shared machine's noise over every policy instead
    of letting one burst spoil one policy's single long run. `measure(policy, round)` is one run (default:
    `rig.run` at `rate` for `segment` seconds).
    """
    pooled = {p: Run(p, rate) for p in policies}
    for n in range(rounds):
        order = list(policies[n % len(policies):]) + list(policies[:n % len(policies)])
        line = []
        for policy in order:
            run = rig.run(policy, rate, segment) if measure is None else measure(policy, n)
            pooled[policy].extend(run)
            pooled[policy].rounds_p99.append(round(run.p(99), 2))
            if len(run.instance) == len(run.status):  # a run that recorded which instance answered
                pooled[policy].rounds_shares.append({k: round(v, 4) for k, v in run.shares().items()})
            line.append(f"{policy} {fmt_ms(run.p(99))}")
        log(f"  round {n + 1}/{rounds} p99: " + ", ".join(line) + f"  (adaptive weights {rig.weights()}; "
            f"{rig.loop_state()})")
    return pooled


def warm(rig: Rig, rate: float, seconds: float) -> None:
    """Give the adaptive listener traffic to learn from (its estimates start empty); not measured."""
    rig.run("adaptive", rate, seconds)


def settle(rig: Rig, rate: float, limit: float = 120.0) -> float | None:
    """Traffic to the adaptive listener until every weight is equal again (all instances are alike now).

    Returns the seconds it took (None: not within `limit`); how fast a recovered instance is probed back in.
    """
    started = time.monotonic()
    while time.monotonic() - started < limit:
        weights = rig.weights()
        if weights and len(set(weights.values())) == 1:
            return time.monotonic() - started
        rig.run("adaptive", rate, 5)
    return None


def ratio_check(what: str, num: Run, den: Run, target: float) -> Check:
    value = num.p(99) / den.p(99)
    return Check(what, value, target, value <= target, f"{fmt_ms(num.p(99))} vs {fmt_ms(den.p(99))}")


def scenario_slow_instance(rig: Rig, seconds: float, reps: int, log: Callable[[str], None]) -> Scenario:
    sc = Scenario("slow_instance_150rps", f"3 x {FAST_MS:g} ms + 1 x {SLOW_MS:g} ms, concurrency 1, "
                                          f"{LOW_RATE:g} rps")
    rig.set_latency(rig.slow.instance_id, SLOW_MS)
    warm(rig, LOW_RATE, 10)
    runs = interleaved(rig, ["default", "oracle", "adaptive", "choice4"], LOW_RATE, seconds, reps, log)
    sc.checks.append(ratio_check("adaptive p99 / oracle p99", runs["adaptive"], runs["oracle"], 1.5))
    sc.checks.append(ratio_check("adaptive p99 / default least_request p99", runs["adaptive"], runs["default"], 0.35))
    sc.policies = {p: r.summary() for p, r in runs.items()}
    sc.extra["weights_at_end"] = rig.weights()
    return sc


def scenario_near_capacity(rig: Rig, seconds: float, reps: int, log: Callable[[str], None]) -> Scenario:
    sc = Scenario("near_capacity_280rps", f"the same instances at {HIGH_RATE:g} rps (capacity about "
                                          f"{3 * 1000 / FAST_MS + 1000 / SLOW_MS:.0f} rps)")
    rig.set_latency(rig.slow.instance_id, SLOW_MS)
    warm(rig, HIGH_RATE, 10)
    runs = interleaved(rig, ["default", "adaptive"], HIGH_RATE, seconds, reps, log)
    adaptive = runs["adaptive"]
    sc.checks.append(Check("adaptive errors", adaptive.errors, 0, adaptive.errors == 0,
                           f"{adaptive.errors} of {len(adaptive.status)}"))
    sc.checks.append(ratio_check("adaptive p99 / default least_request p99", adaptive, runs["default"], 0.5))
    slow_share = adaptive.shares().get(rig.slow.instance_id, 0.0)
    sc.notes.append(f"share of requests the adaptive listener sent to the slow instance: {slow_share:.1%} "
                    f"(its capacity is {1000 / SLOW_MS / HIGH_RATE:.1%} of the load)")
    sc.extra["adaptive_slow_share"] = slow_share
    sc.policies = {p: r.summary() for p, r in runs.items()}
    sc.extra["weights_at_end"] = rig.weights()
    return sc


def scenario_degrade(rig: Rig, before: float, after: float,
                     log: Callable[[str], None]) -> tuple[Scenario, dict[str, Any]]:
    sc = Scenario("degrade_mid_run", f"4 x {FAST_MS:g} ms at {LOW_RATE:g} rps; one instance degrades to "
                                     f"{DEGRADED_MS:g} ms after {before:g} s")
    rig.set_latency(rig.slow.instance_id, FAST_MS)
    victim = rig.instances[1].instance_id
    victim_address = rig.address_of(victim)
    window = 30.0 if after >= 30 else after
    traces: dict[str, Any] = {}
    results: dict[str, Run] = {}
    recovered_in: float | None = None
    for policy in ("default", "adaptive"):
        if policy == "adaptive":
            settled = settle(rig, LOW_RATE)  # all four are equal now: let the weights come back first
            sc.extra["equal_weights_after_seconds"] = settled
            log(f"  adaptive weights before the change: {rig.weights()} (equal after {settled} s)")
        marks: dict[str, float] = {}
        trace: list[tuple[float, dict[str, int], dict[str, float | None]]] = []

        def during(start: float, policy: str = policy, marks: dict[str, float] = marks,
                   trace: list[Any] = trace) -> None:
            deadline = start + before + after
            changed = False
            while time.time() < deadline:
                now = time.time()
                if not changed and now >= start + before:
                    rig.set_latency(victim, DEGRADED_MS)
                    marks["change"] = time.time()
                    changed = True
                if policy == "adaptive" and rig.runner is not None:
                    rows = {r["address"]: r for r in rig.runner.rows("adaptive")}
                    trace.append((time.time(), rig.weights(),
                                  {a: r.get("latency_ms") for a, r in rows.items()}))  # type: ignore[misc]
                time.sleep(0.25)

        run = rig.run(policy, LOW_RATE, before + after, during)
        rig.set_latency(victim, FAST_MS)
        change = marks.get("change", run.started + before)
        results[policy] = run
        traces[policy] = {"change": change, "trace": trace, "run": run}
        log(f"  {policy:9s}: p99 after change {fmt_ms(run.p(99, (change, change + window)))}, "
            f"before {fmt_ms(run.p(99, (run.started, change)))}")
        if policy == "adaptive":
            # Recovery: the instance is fast again; how long until it is back at the heaviest weight?
            rec_start = time.time()

            def probe(start: float, rec: dict[str, float] = marks) -> None:
                while time.time() < start + 60:
                    weights = rig.weights()
                    if weights and weights.get(victim_address, 0) >= max(weights.values()):
                        rec["recovered"] = time.time()
                        return
                    time.sleep(0.25)

            rig.run("adaptive", LOW_RATE, 60, probe)
            if "recovered" in marks:
                recovered_in = marks["recovered"] - rec_start
    d, a = results["default"], results["adaptive"]
    change_d, change_a = traces["default"]["change"], traces["adaptive"]["change"]
    p99_d = d.p(99, (change_d, change_d + window))
    p99_a = a.p(99, (change_a, change_a + window))
    dropped_at = next((t for t, w, _ in traces["adaptive"]["trace"]
                       if t >= change_a and w.get(victim_address, 0) <= 0.5 * max(w.values() or [1])), None)
    drop_s = (dropped_at - change_a) if dropped_at is not None else float("inf")
    sc.checks.append(Check("seconds until the degraded instance's weight drops (to half or less)", drop_s, 10.0,
                           drop_s <= 10.0))
    sc.checks.append(Check(f"adaptive p99 / default p99 over the {window:g} s after the change", p99_a / p99_d, 0.5,
                           p99_a / p99_d <= 0.5, f"{fmt_ms(p99_a)} vs {fmt_ms(p99_d)}"))
    sc.extra["recovery_seconds"] = recovered_in
    sc.notes.append("after the run the instance is made fast again; the adaptive listener brought its weight "
                    "back to the heaviest in "
                    + (f"{recovered_in:.1f} s" if recovered_in is not None else "more than 60 s (not seen)")
                    + " (the starvation guard: it kept getting probe traffic)")
    sc.policies = {p: {**r.summary(), "p99_after_change_ms": round(
        r.p(99, (traces[p]["change"], traces[p]["change"] + window)), 2)} for p, r in results.items()}
    return sc, {"traces": traces, "victim": victim_address, "before": before}


def scenario_identical(rig: Rig, seconds: float, reps: int, log: Callable[[str], None]) -> Scenario:
    sc = Scenario("identical_instances", f"4 identical instances ({FAST_MS:g} ms, concurrency 1), {LOW_RATE:g} rps")
    for info in rig.instances:
        rig.set_latency(info.instance_id, FAST_MS)
    sc.extra["equal_weights_after_seconds"] = settle(rig, LOW_RATE)
    runs = interleaved(rig, ["default", "adaptive"], LOW_RATE, seconds, reps, log)
    sc.checks.append(ratio_check("adaptive p99 / default least_request p99", runs["adaptive"], runs["default"], 1.1))
    sc.policies = {p: r.summary() for p, r in runs.items()}
    sc.extra["weights_at_end"] = rig.weights()
    return sc


# --- plots -----------------------------------------------------------------------------------------------


def plot_degrade(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    traces = data["traces"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    for policy, color in (("default", "#c44e52"), ("adaptive", "#4c72b0")):
        change = traces[policy]["change"]
        series = traces[policy]["run"].per_second_p99(change)
        top.plot([t for t, _ in series], [v for _, v in series], color=color,
                 label=f"{policy} least_request" if policy == "default" else "adaptive (agent weights)")
    top.set_yscale("log")
    top.set_ylabel("p99 per second (ms, log)")
    top.axvline(0, color="gray", linestyle="--")
    top.legend(loc="upper left")
    top.set_title(f"one of 4 instances degrades from {FAST_MS:g} ms to {DEGRADED_MS:g} ms at t = 0")
    change = traces["adaptive"]["change"]
    trace = traces["adaptive"]["trace"]
    addresses = sorted({a for _, w, _ in trace for a in w})
    for address in addresses:
        label = address + (" (degrades)" if address == data["victim"] else "")
        bottom.step([t - change for t, _, _ in trace], [w.get(address, float("nan")) for _, w, _ in trace],
                    where="post", label=label, linewidth=2.2 if address == data["victim"] else 1.2)
    bottom.set_yscale("log")
    bottom.set_ylabel("published weight (log)")
    bottom.set_xlabel("seconds since the change")
    bottom.axvline(0, color="gray", linestyle="--")
    bottom.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_p99(scenarios: Sequence[Scenario], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [s for s in scenarios if s.name != "degrade_mid_run"]
    colors = {"default": "#c44e52", "choice4": "#dd8452", "oracle": "#55a868", "adaptive": "#4c72b0"}
    fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 4))
    for ax, sc in zip(axes if len(shown) > 1 else [axes], shown, strict=True):
        names = list(sc.policies)
        values = [sc.policies[n]["p99_ms"] for n in names]
        ax.bar(range(len(names)), values, color=[colors.get(n, "gray") for n in names])
        for x, v in enumerate(values):
            ax.text(x, v, fmt_ms(v), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_yscale("log")
        ax.set_ylim(5, max(values) * 2)  # a fixed floor: on a log axis autoscaling blows up tiny gaps
        ax.set_title(sc.title, fontsize=8)
        ax.set_ylabel("p99 (ms, log)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- main ------------------------------------------------------------------------------------------------


def measure_cost(rig: Rig, log: Callable[[str], None], reads: int = 200) -> dict[str, Any]:
    """What the feedback loop costs: its own CPU per admin read (over the whole bench), and Envoy's CPU
    per `/clusters?format=json` read (back-to-back reads with no traffic, the loop stopped)."""
    import http.client

    loop = rig.runner.loop if rig.runner else None
    if loop is None or rig.envoy.proc is None or loop.reads_ok == 0:
        return {}
    agent_ms = 1000 * loop.cpu_seconds / loop.reads_ok
    assert rig.runner is not None
    rig.runner.stop()
    rig.idle()
    pid = rig.envoy.proc.pid
    conn = http.client.HTTPConnection("127.0.0.1", rig.config.envoy.admin_port, timeout=5)
    before = proc_cpu_seconds(pid)
    for _ in range(reads):
        conn.request("GET", "/clusters?format=json")
        conn.getresponse().read()
    envoy_ms = 1000 * (proc_cpu_seconds(pid) - before) / reads
    from agent.adaptive.envoy_admin import TIMING_FILTER

    before = proc_cpu_seconds(pid)
    for _ in range(reads):
        conn.request("GET", TIMING_FILTER)
        conn.getresponse().read()
    stats_ms = 1000 * (proc_cpu_seconds(pid) - before) / reads
    conn.close()
    rate = 1 / rig.config.adaptive.sample_interval_seconds
    cost = {"hosts_in_envoy": sum(len(svc.endpoints) for svc in rig._snapshot().services.values()),
            "reads_per_second_with_traffic": rate, "reads_per_second_idle": rate / 10,
            "agent_cpu_ms_per_read": round(agent_ms, 3),
            "agent_cpu_percent_with_traffic": round(agent_ms * rate / 10, 2),
            "envoy_cpu_ms_per_read": round(envoy_ms, 3),
            "envoy_cpu_ms_per_timing_read": round(stats_ms, 3),  # the /stats read of the timing counters
            "envoy_cpu_percent_with_traffic": round(envoy_ms * rate / 10, 2)}
    log(f"  feedback loop cost: {cost}")
    return cost


def machine() -> dict[str, Any]:
    # BENCH_GIT_COMMIT: the commit of a snapshot without .git (git archive), so a run on it says what it ran.
    commit = os.environ.get("BENCH_GIT_COMMIT") or subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
        check=False).stdout.strip()
    return {"nproc": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "load_generator": "vegeta" if os.access(VEGETA, os.X_OK) else "asyncio/aiohttp",
            "git_commit": commit, "date": machine_facts_date()}


def quiet(log: Callable[[str], None], limit: float = 180.0) -> None:
    """On a shared machine, wait (bounded) until the 1-minute load average is below the core count."""
    deadline = time.monotonic() + limit
    cores = os.cpu_count() or 1
    if os.getloadavg()[0] >= cores:
        log(f"  waiting for a quieter machine (load average {os.getloadavg()[0]:.1f}, {cores} cores)")
    while os.getloadavg()[0] >= cores and time.monotonic() < deadline:
        time.sleep(5)


@contextlib.contextmanager
def pinned(cpus: set[int]) -> Iterator[None]:
    """This process (the feedback loop) next to Envoy; children get their own taskset."""
    before = os.sched_getaffinity(0)
    with contextlib.suppress(OSError):
        if (os.cpu_count() or 1) >= 2:
            os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, before)


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def main(argv: Sequence[str] | None = None) -> int:
    import signal

    def terminate(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    # SIGTERM (a harness timeout) unwinds like Ctrl-C, so the finally blocks stop every child.
    signal.signal(signal.SIGTERM, terminate)
    parser = argparse.ArgumentParser(prog="python -m bench.adaptive_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds (about 6 minutes)")
    parser.add_argument("--only", action="append", default=[], help="run only these scenarios (1-4)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--img-dir", type=Path, default=IMG_DIR)
    parser.add_argument("--ads", action="store_true",
                        help="feed Envoy over ADS from the agent's xDS server instead of EDS files "
                             "(results to bench/results/adaptive-ads.json unless --output is given)")
    parser.add_argument("--classic", action="store_true",
                        help="the four earlier scenarios instead of the issue-17 matrix (bench/adaptive_matrix.py)")
    parser.add_argument("--cells", default="a,b,c",
                        help="the matrix's groups to run, comma-separated (a: 1-slot steady cells, spell, breaker; "
                             "b: drift, cold starts; c: 4 slots and streams); each fits one 12-minute locked run, "
                             "and the results of the groups not run are kept from earlier runs")
    parser.add_argument("--cell", action="append", default=[],
                        help="run only this matrix cell (repeatable; names in bench/adaptive_matrix.CELLS), e.g. "
                             "to re-measure the cells that missed")
    parser.add_argument("--report-only", action="store_true",
                        help="only rewrite the section of docs/benchmarks.md from the last results")
    args = parser.parse_args(argv)
    if args.ads and args.output == RESULTS:
        args.output = RESULTS_ADS
    suffix = "-ads" if args.ads else ""
    if args.report_only:
        update_doc(BENCHMARKS_DOC, json.loads(RESULTS.read_text()), _load(RESULTS_ADS))
        return 0
    seconds, reps = (7.5, 2) if args.quick else (10.0, 4)  # segment length, rounds
    before, after = (15.0, 30.0) if args.quick else (20.0, 40.0)
    wanted = set(args.only) or {"1", "2", "3", "4"}

    def log(text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    if not args.classic:
        return matrix_main(args, log)
    scenarios: list[Scenario] = []
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="adaptive-bench-") as tmp, pinned({int(PROXY_CPU)}):
        rig = Rig(Path(tmp), "ads" if args.ads else "files")
        try:
            log(f"rig up: {len(rig.instances)} instances, load by {rig.load.tool}")
            steps: list[tuple[str, Callable[[], Scenario]]] = [
                ("1", lambda: scenario_slow_instance(rig, seconds, reps, log)),
                ("2", lambda: scenario_near_capacity(rig, seconds, reps, log)),
            ]
            for key, step in steps:
                if key in wanted:
                    quiet(log)
                    load0 = os.getloadavg()[0]
                    log(f"scenario {key}")
                    sc = step()
                    sc.load_average = (round(load0, 2), round(os.getloadavg()[0], 2))
                    scenarios.append(sc)
            if "3" in wanted:
                quiet(log)
                load0 = os.getloadavg()[0]
                log("scenario 3")
                sc, data = scenario_degrade(rig, before, after, log)
                sc.load_average = (round(load0, 2), round(os.getloadavg()[0], 2))
                args.img_dir.mkdir(parents=True, exist_ok=True)
                plot_degrade(data, args.img_dir / f"adaptive-degrade{suffix}.png")
                sc.extra["plot"] = f"docs/img/adaptive-degrade{suffix}.png"
                scenarios.append(sc)
            if "4" in wanted:
                quiet(log)
                load0 = os.getloadavg()[0]
                log("scenario 4")
                sc = scenario_identical(rig, seconds, reps, log)
                sc.load_average = (round(load0, 2), round(os.getloadavg()[0], 2))
                scenarios.append(sc)
            cost = measure_cost(rig, log)
        finally:
            rig.close()
    if any(s.name != "degrade_mid_run" for s in scenarios):
        args.img_dir.mkdir(parents=True, exist_ok=True)
        plot_p99(scenarios, args.img_dir / f"adaptive-p99{suffix}.png")
    result = {"benchmark": "adaptive load balancing", "transport": rig.transport, "quick": args.quick,
              "machine": machine(),
              "seconds_per_segment": seconds, "rounds": reps, "wall_seconds": round(time.time() - started, 1),
              "feedback_loop_cost": cost, "scenarios": [s.as_dict() for s in scenarios]}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    for sc in scenarios:
        for check in sc.checks:
            log(f"{check.as_dict()['status']:4s} {sc.name}: {check.what} = {check.value:.3g} "
                f"(target ≤ {check.target:g}) {check.detail}")
    log(f"wrote {args.output}")
    if not args.quick and args.output in (RESULTS, RESULTS_ADS) and RESULTS.exists():
        update_doc(BENCHMARKS_DOC, json.loads(RESULTS.read_text()), _load(RESULTS_ADS))
        log(f"updated {BENCHMARKS_DOC}")
    return 0


def matrix_main(args: argparse.Namespace, log: Callable[[str], None]) -> int:
    from bench.adaptive_matrix import CELLS, GROUPS, run_matrix

    groups = tuple(g.strip() for g in str(args.cells).split(",") if g.strip())
    if not groups or any(g not in GROUPS for g in groups):
        print(f"--cells: expected a comma-separated subset of {','.join(GROUPS)}, got {args.cells!r}",
              file=sys.stderr)
        return 2
    only = frozenset(args.cell)
    unknown = sorted(only - {c for g in GROUPS for c in CELLS[g]})
    if unknown:
        print(f"--cell: unknown cell(s) {unknown}; known: {[c for g in GROUPS for c in CELLS[g]]}", file=sys.stderr)
        return 2
    if only:
        groups = tuple(g for g in GROUPS if only & set(CELLS[g]))
    started = time.time()
    load0 = os.getloadavg()
    with pinned({int(PROXY_CPU)}):
        scenarios, facts = run_matrix(args.img_dir, log, "ads" if args.ads else "files", groups, only)
    load1 = os.getloadavg()
    shared = max(load0[0], load1[0], load0[1], load1[1]) >= (os.cpu_count() or 1)
    run = {"groups": list(groups), **({"cells": sorted(only)} if only else {}), **machine(),
           "load_average_start": load0, "load_average_end": load1,
           "shared_machine_busy": shared, "wall_seconds": round(time.time() - started, 1),
           "skipped": facts["skipped"]}
    # Groups run separately (one locked run each) are merged: the others' cells are kept from their run.
    earlier = _load(args.output) or {}
    # With --cell, only the scenarios re-run are replaced, and every earlier run stays listed.
    fresh = {s.name for s in scenarios}
    kept = [sc for sc in earlier.get("scenarios", []) if sc.get("group")
            and (sc.get("group") not in groups or (only and sc.get("name") not in fresh))]
    runs = [r for r in earlier.get("runs", []) if only or not set(r.get("groups", [])) & set(groups)] + [run]
    result = {"benchmark": "adaptive load balancing (issue 17 matrix)", "transport": "ads" if args.ads else "files",
              "quick": False, "machine": {**machine(), "load_average_start": load0, "load_average_end": load1,
                                          "shared_machine_busy": shared},
              "runs": runs, "seconds_per_segment": facts["segment"], "rounds": facts["rounds"],
              "wall_seconds": sum(r.get("wall_seconds", 0) for r in runs),
              "feedback_loop_cost": facts["feedback_loop_cost"] or earlier.get("feedback_loop_cost", {}),
              "skipped": [n for r in runs for n in r.get("skipped", [])],
              "scenarios": kept + [s.as_dict() for s in scenarios]}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    for sc in scenarios:
        for check in sc.checks:
            log(f"{check.as_dict()['status']:4s} {sc.name}: {check.what} = {check.value:.3g} "
                f"(target {check.target:g}) {check.detail}")
    log(f"wrote {args.output}")
    if args.output in (RESULTS, RESULTS_ADS) and RESULTS.exists():
        update_doc(BENCHMARKS_DOC, json.loads(RESULTS.read_text()), _load(RESULTS_ADS))
        log(f"updated {BENCHMARKS_DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
