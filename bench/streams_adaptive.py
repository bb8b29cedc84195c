"""Adaptive on vs off for token streams, with enough streams to decide (issue 16 item 3):
`python -m bench.streams_adaptive [--cells aa,identical,uneven,uneven_light] [--rounds 6] [--aa-rounds 4]
[--segment 20]`.

The workload of the matrix's group c stream cells (bench/adaptive_matrix.py: SSE streams of 5-40 tokens
50 ms apart, ~60 % of 4 x 4 slots, first token 20 ms lognormal; uneven: one instance at 200 ms), and the
uneven cell at 25 % of the slots (uneven_light), where the others can carry the slow instance's streams.

Method. Each policy has a set of instances of its own (8 emulator instances, 4 per policy, configured
alike: in the uneven cell the last of each set is the slow one), and the two policies run at the same
time, stream by stream: stream k of the plan goes to both listeners, the first of the two alternating
with k and the other half an interval later. A stall of the machine or of the client (both listeners
are in one Envoy, the client is one event loop) so lands on both arms alike. The Envoy has the two
listeners only, configured alike but for the policy. Halfway through a cell's rounds the arms swap
instance sets (republished as EDS, then a warm-up), so whatever one set of instances does to the tail
(its place in the emulator, its ports) lands on both arms; the JSON keeps the ratio of each half, which
shows such a bias as halves on either side of the pooled ratio. The `aa` cell is the A/A control: the
same bench with both listeners least_request, adaptive off, on identical instances, on a rig of its own;
its interval must hold 1 (PASS), or the bench favours an arm (MISS) and the other cells say nothing.
Both arms are warmed up alike; the client's garbage collector runs between the phases, never during
one. Each figure is the p99 of all streams pooled, with a 95 % interval from resampling paired blocks
(BLOCK consecutive stream indices: the same plan, the same moments, for both arms), half of them per draw
(an m-out-of-n bootstrap, see `decide`: the plain one was too narrow for this p99): an interval that
straddles its target is INCONCLUSIVE.

Writes bench/results/streams-adaptive.json (cells not run are kept from the earlier file).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, MappingProxyType
from typing import Any

import bench.adaptive_bench as adaptive_bench
from agent.model import Endpoint, ServiceSnapshot, Snapshot
from bench.adaptive_bench import PROXY_CPU, Rig, Run, machine, percentile, pinned, quiet
from bench.adaptive_matrix import STREAM_MS, STREAM_SLOW_MS, STREAM_TOKENS
from bench.doc_sections import replace_marked

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "streams-adaptive.json"
# aa: the A/A control, both listeners least_request, adaptive off; uneven_light: the uneven cell at 25 % of the
# slots, where the other three instances have the slots to carry the slow one's streams (the tail rule's case,
# agent/adaptive/stream_tail.py: at 30 % it is at the rule's edge)
CELLS = ("aa", "identical", "uneven", "uneven_light")
LOAD = {"aa": 0.6, "identical": 0.6, "uneven": 0.6, "uneven_light": 0.25}  # share of the 16 slots held
ARMS = ("default", "adaptive")  # least_request with adaptive off / on
PER_ARM = 4  # instances per arm
WARMUP = 8.0  # seconds of unmeasured streams at a cell's start and after the swap
BLOCK = 50  # stream indices per resampled block (~6 s at 8.4 streams/s)
BOOTSTRAP = 2000  # resamples of the blocks
SUBSAMPLE = 0.5  # blocks per resample / blocks (m-out-of-n: see `decide`)
# TTFT p99 ratio: equal (A/A) / no worse / better
TARGETS = {"aa": 1.0, "identical": 1.05, "uneven": 1.0, "uneven_light": 1.0}
MIN_WEIGHT_RATIO = 0.8  # identical instances: lightest / heaviest weight, the matrix's "within 20 %"
Log = Callable[[str], None]


@dataclass(frozen=True)
class Send:
    index: int  # the plan's stream index: both arms get each index once
    at: float  # seconds after the phase's start
    arm: str
    tokens: int


def schedule(rate: float, seconds: float, seed: int) -> list[Send]:
    """Stream k at k / rate to both arms, the first of the two alternating with k, the other half an
    interval later: the arms see the same plan at the same moments, neither always first."""
    rng = random.Random(seed)
    gap = 0.5 / rate
    sends = []
    for k in range(int(rate * seconds)):
        tokens = rng.randint(*STREAM_TOKENS)
        first, second = ARMS if k % 2 == 0 else ARMS[::-1]
        sends += [Send(k, k / rate, first, tokens), Send(k, k / rate + gap, second, tokens)]
    return sends


def blocks(index: Sequence[int], latency: Sequence[float], size: int = BLOCK) -> list[list[float]]:
    """One arm's latencies grouped by stream index into blocks of `size` consecutive indices."""
    grouped: dict[int, list[float]] = {}
    for k, value in zip(index, latency, strict=True):
        grouped.setdefault(k // size, []).append(value)
    return [grouped[b] for b in sorted(grouped)]


def p99_ratio(adaptive: Sequence[Sequence[float]], default: Sequence[Sequence[float]]) -> float:
    a = [v for block in adaptive for v in block]
    d = [v for block in default for v in block]
    return percentile(a, 99) / percentile(d, 99)


@dataclass(frozen=True)
class Verdict:
    ratio: float
    low: float  # 95 % bootstrap interval of the ratio
    high: float
    status: str  # PASS / MISS / INCONCLUSIVE
    reason: str


def decide(cell: str, adaptive: Sequence[Sequence[float]], default: Sequence[Sequence[float]],
           seed: int = 1, subsample: float = SUBSAMPLE) -> Verdict:
    """Pooled p99 ratio, and its interval from resampling paired blocks (block i of both arms together,
    so what happened to the machine during a block stays in both arms of a draw).

    The interval is an m-out-of-n bootstrap of the log ratio: draws of `subsample` x the blocks, their
    spread around the pooled figure scaled by sqrt(m / n), reversed (the basic interval). The plain
    bootstrap (all n blocks, percentiles of the draws) is too narrow for a p99 that a few slot-wait bursts
    decide: in the cluster simulator's A/A (two arms of least_request on identical instances, ~1,000
    streams each, 40 pairs of runs) its 95 % interval left 1 out 6 times in 40; this one 4 times in 120."""
    ratio = p99_ratio(adaptive, default)
    rng = random.Random(seed)
    pairs = list(zip(adaptive, default, strict=True))
    m = max(2, round(subsample * len(pairs)))
    centre = math.log(ratio)
    draws = []
    for _ in range(BOOTSTRAP):
        sample = [rng.choice(pairs) for _ in range(m)]
        draws.append(math.log(p99_ratio([a for a, _ in sample], [d for _, d in sample])) - centre)
    draws.sort()
    scale = math.sqrt(m / len(pairs))
    low = math.exp(centre - scale * draws[int(0.975 * len(draws)) - 1])
    high = math.exp(centre - scale * draws[int(0.025 * len(draws))])
    target = TARGETS[cell]
    if cell == "aa":  # the A/A control: the same policy on both arms, so 1 must be inside the interval
        if low <= target <= high:
            return Verdict(ratio, low, high, "PASS", f"the interval holds {target:g}: no arm bias")
        return Verdict(ratio, low, high, "MISS", f"the interval misses {target:g}: the bench favours one arm")
    strict = cell.startswith("uneven")  # "better than off" is < 1; "no worse" allows the matrix's 5 %
    if (high < target) if strict else (high <= target):
        return Verdict(ratio, low, high, "PASS", f"the whole interval is below {target:g}")
    if (low >= target) if strict else (low > target):
        return Verdict(ratio, low, high, "MISS", f"the whole interval is above {target:g}")
    return Verdict(ratio, low, high, "INCONCLUSIVE", f"the interval straddles {target:g}")


def split(instance_ids: Sequence[str], swapped: bool = False) -> dict[str, list[str]]:
    """The sorted instances in consecutive halves, one per arm: position j plays the same part in both.
    `swapped`: each arm gets the other's half (the second half of a cell's rounds)."""
    ordered = sorted(instance_ids)
    if len(ordered) != PER_ARM * len(ARMS):
        raise ValueError(f"{len(ordered)} instances, want {PER_ARM * len(ARMS)}")
    arms = ARMS[::-1] if swapped else ARMS
    return {arm: ordered[n * PER_ARM:(n + 1) * PER_ARM] for n, arm in enumerate(arms)}


def swapped_rounds(rounds: int) -> list[bool]:
    """Which rounds run with the instance sets swapped: the second half (an odd round out goes to the first),
    so each arm spends as many rounds on each set and an instance set's own bias cancels in the pooled p99."""
    return [n >= (rounds + 1) // 2 for n in range(rounds)]


class _EightInstances:
    """bench.adaptive_bench's `yaml` while the rig starts: its emulator scenario with PER_ARM per arm."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def safe_dump(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        for service in data.get("services", []) if isinstance(data, dict) else []:
            service["instances"] = PER_ARM * len(ARMS)
        return self.real.safe_dump(data, *args, **kwargs)


class PairedRig(Rig):
    """The adaptive bench's rig with 8 instances, 4 for each arm's cluster, and only the two arms' listeners,
    configured alike but for the policy. `control`: the A/A run, the `adaptive` listener with adaptive off too."""

    def __init__(self, workdir: Path, concurrency: int, control: bool = False) -> None:
        self.POLICIES = policies(control)
        self.swapped = False
        super().__init__(workdir, "files", concurrency=concurrency)

    def swap(self) -> None:
        """Each arm to the other's instance set (republished as EDS)."""
        self.swapped = not self.swapped
        self.sink.publish(self._snapshot())

    def _start(self) -> None:
        module = vars(adaptive_bench)
        real = module["yaml"]
        module["yaml"] = _EightInstances(real)
        try:
            super()._start()
        finally:
            module["yaml"] = real

    def sets(self) -> dict[str, list[str]]:
        return split([i.instance_id for i in self.instances], self.swapped)

    def slow_ids(self) -> list[str]:
        return [ids[-1] for ids in self.sets().values()]

    def _snapshot(self) -> Snapshot:
        sets = self.sets()
        by_id = {i.instance_id: i for i in self.instances}

        def endpoints(name: str) -> tuple[Endpoint, ...]:
            ids = sets[name]
            return tuple(sorted(Endpoint(ip=by_id[i].ip, port=by_id[i].port) for i in ids))

        services = {spec.name: ServiceSnapshot(spec.name, spec.service_id, synced=True, endpoints=endpoints(spec.name))
                    for spec in self.config.services}
        return Snapshot(version=1, services=MappingProxyType(dict(sorted(services.items()))))


def policies(control: bool) -> dict[str, dict[str, Any]]:
    """The two listeners' lb settings: the same policy, adaptive off and on (both off for the A/A control)."""
    return {"default": {"policy": "least_request", "adaptive": False},
            "adaptive": {"policy": "least_request", "adaptive": not control}}


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The client's garbage collector between phases only: a collection during one would stall whichever
    streams were due then."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()
        gc.collect()


def phase(rig: PairedRig, rate: float, seconds: float, seed: int) -> dict[str, tuple[list[int], Run]]:
    """One phase of the schedule, both arms at once; per arm the plan indices and their Run (TTFT from
    the intended send time, so a late client counts against the stream it delayed)."""
    import aiohttp

    rig.idle()
    served = {arm: rig.cluster_requests(arm) for arm in ARMS}
    out: dict[str, tuple[list[int], Run]] = {arm: ([], Run(arm, rate, time.time())) for arm in ARMS}
    urls = {arm: f"http://{rig.listen_ip}:{rig.ports[arm]}/stream" for arm in ARMS}

    async def one(session: aiohttp.ClientSession, send: Send, origin: float) -> None:
        loop = asyncio.get_running_loop()
        delay = send.at - (loop.time() - origin)
        if delay > 0:
            await asyncio.sleep(delay)
        ttft, status, instance = float("nan"), 0, ""
        try:
            async with session.get(urls[send.arm], params={"tokens": str(send.tokens), "interval_ms": "50"}) as resp:
                status, instance = resp.status, resp.headers.get("X-Instance-Id", "")
                async for line in resp.content:
                    if line.startswith(b"data:") and ttft != ttft:
                        ttft = loop.time() - origin - send.at
        except (TimeoutError, aiohttp.ClientError):
            status = 0
        index, run = out[send.arm]
        index.append(send.index)
        run.sent.append(run.started + send.at)
        run.latency.append(ttft if ttft == ttft else loop.time() - origin - send.at)
        run.status.append(status)
        run.instance.append(instance)

    async def main() -> None:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
            origin = asyncio.get_running_loop().time()
            await asyncio.gather(*(one(session, s, origin) for s in schedule(rate, seconds, seed)))

    with gc_paused():
        asyncio.run(main())
    for arm, (_, run) in out.items():
        reached = rig.cluster_requests(arm) - served[arm]
        if reached < 0.95 * (len(run.latency) - run.errors):
            raise RuntimeError(f"{arm}: only {reached} of {len(run.latency)} streams went through its cluster")
    return out


def run_cell(rig: PairedRig, cell: str, segment: float, rounds: int, log: Log) -> dict[str, Any]:
    uneven = cell.startswith("uneven")
    rate = LOAD[cell] * PER_ARM * rig.concurrency / (sum(STREAM_TOKENS) / 2 * 0.05 + STREAM_MS / 1000)  # per arm
    for info in rig.instances:
        rig.set_latency(info.instance_id, STREAM_MS, "lognormal")
    if uneven:
        for slow in rig.slow_ids():
            rig.set_latency(slow, STREAM_SLOW_MS, "lognormal")
    load0 = os.getloadavg()[0]
    if rig.swapped:
        rig.swap()  # every cell starts on the same sets
    index: dict[str, list[int]] = {arm: [] for arm in ARMS}
    runs: dict[str, Run] = {arm: Run(arm, rate) for arm in ARMS}
    per_round: dict[str, list[float]] = {arm: [] for arm in ARMS}
    weights: list[dict[str, int]] = []
    sets_used: list[dict[str, list[str]]] = []
    offset, swap_offset = 0, 0
    for n, swapped in enumerate(swapped_rounds(rounds)):
        if n == 0 or swapped != rig.swapped:
            if swapped != rig.swapped:
                rig.swap()
                swap_offset = offset
                log(f"  {cell}: instance sets swapped, {rig.sets()}")
            # Warm-up of both arms alike (the loop's evidence, both pools), not measured: at the start, and
            # after the swap, where the adaptive loop meets its new instances.
            phase(rig, rate, WARMUP, seed=99 + n)
        sets_used.append(rig.sets())
        got = phase(rig, rate, segment, seed=n)
        for arm, (ks, run) in got.items():
            index[arm] += [k + offset for k in ks]  # indices unique across phases: blocks never span two
            runs[arm].extend(run)
            per_round[arm].append(round(run.p(99), 2))
        offset += -(-int(rate * segment) // BLOCK) * BLOCK
        weights.append(rig.weights())
        log(f"  {cell} round {n + 1}/{rounds}: TTFT p99 default {per_round['default'][-1]:.1f} ms, adaptive "
            f"{per_round['adaptive'][-1]:.1f} ms, weights {weights[-1]}")
    grouped = {arm: blocks(index[arm], runs[arm].latency) for arm in ARMS}
    verdict = decide(cell, grouped["adaptive"], grouped["default"])
    halves = half_ratios(index, runs, swap_offset) if swap_offset else None
    min_ratio = round(min((min(w.values()) / max(w.values()) for w in weights if w), default=1.0), 3)
    status, reason = verdict.status, verdict.reason
    if cell == "identical" and min_ratio < MIN_WEIGHT_RATIO:
        status, reason = "MISS", f"lightest / heaviest weight {min_ratio} < {MIN_WEIGHT_RATIO}; {reason}"
    pooled = {arm: {**runs[arm].summary(), "p99_ms_per_segment": per_round[arm],
                    "instances_per_segment": [used[arm] for used in sets_used]} for arm in ARMS}
    slow_ids = set(rig.slow_ids())
    slow_share = {arm: round(sum(v for k, v in runs[arm].shares().items() if k in slow_ids), 4)
                  for arm in ARMS} if uneven else None
    return {"cell": cell, "method": "arms at once on instance sets of their own, swapped for the second half of "
                                    "the rounds, stream by stream; paired blocks",
            "policies_compared": "least_request vs least_request (A/A control)" if cell == "aa"
            else "least_request, adaptive off vs on",
            "ratio_p99_per_half": halves,
            "rate_per_arm": round(rate, 2), "segment_seconds": segment, "rounds": rounds, "block_streams": BLOCK,
            "blocks": len(grouped["default"]),
            "slow_instances": sorted(slow_ids) if uneven else None, "slow_share": slow_share,
            "first_token_ms": STREAM_MS, "slow_first_token_ms": STREAM_SLOW_MS if uneven else None,
            "policies": pooled, "weights_per_round": weights,
            "min_weight_ratio": min_ratio, "min_weight_ratio_target": MIN_WEIGHT_RATIO if cell == "identical" else None,
            "ratio_p99": round(verdict.ratio, 3), "interval_95": [round(verdict.low, 3), round(verdict.high, 3)],
            "target": TARGETS[cell], "status": status, "reason": reason,
            "load_average": [round(load0, 2), round(os.getloadavg()[0], 2)]}


def half_ratios(index: dict[str, list[int]], runs: dict[str, Run], swap_offset: int) -> list[float]:
    """The p99 ratio over the rounds before the swap and over those after: an instance set's own bias shows as
    halves on either side of the pooled ratio (in the A/A control, on either side of 1)."""
    out = []
    for first in (True, False):
        part = {arm: [v for k, v in zip(index[arm], runs[arm].latency, strict=True) if (k < swap_offset) == first]
                for arm in ARMS}
        out.append(round(percentile(part["adaptive"], 99) / percentile(part["default"], 99), 3))
    return out


# --- docs/benchmarks.md: this bench's subsection and summary rows ------------------------------------------

BENCHMARKS_DOC = REPO / "docs" / "benchmarks.md"
DOC_BEGIN = ("<!-- streams-adaptive:begin (written by bench/streams_adaptive.py from "
             "bench/results/streams-adaptive.json) -->")
DOC_END = "<!-- streams-adaptive:end -->"
SECTION = "### Adaptive on vs off for token streams"
ROW_PREFIX = "| 8. gRPC and token streams: direct vs a hand-written minimal Envoy vs the sidecar Envoy | "
ROW_MARK = "(bench/streams_adaptive.py)"  # in every summary row this bench writes
SUMMARY = "## Summary: every figure beside its target"  # bench/report.py's heading
CELL_TITLE = {"aa": "A/A control (both arms least_request, identical instances)",
              "identical": "identical (all 20 ms to the first token)",
              "uneven": "uneven (one instance 200 ms to its first token), 60 % of the slots",
              "uneven_light": "uneven, 25 % of the slots"}


def _cell_row(cell: dict[str, Any]) -> str:
    pol = cell["policies"]
    low, high = cell["interval_95"]
    if cell["cell"] == "aa":
        arms = f"{pol['adaptive']['p99_ms']:.0f} vs {pol['default']['p99_ms']:.0f} ms (second vs first listener)"
        weights = "no loop (adaptive off on both)"
    else:
        arms = (f"{pol['adaptive']['p99_ms']:.0f} vs {pol['default']['p99_ms']:.0f} ms; p90 "
                f"{pol['adaptive']['p90_ms']:.0f} vs {pol['default']['p90_ms']:.0f} ms")
        if cell["slow_share"]:
            share = cell["slow_share"]
            lows = [min(w.values()) for w in cell["weights_per_round"] if w]
            weights = (f"the slow instance's weight {min(lows)}-{max(lows)} at the phases' ends, "
                       f"{share['adaptive']:.1%} of the streams (least_request {share['default']:.1%})")
        else:
            weights = f"lightest / heaviest at a phase's end {cell['min_weight_ratio']} (target ≥ 0.8)"
    errors = sum(int(pol[a].get("errors", 0)) for a in ARMS)
    halves = cell.get("ratio_p99_per_half") or ["-", "-"]
    op = {"aa": "holds 1", "identical": f"≤ {cell['target']:g}"}.get(cell["cell"], f"< {cell['target']:g}")
    return (f"| {CELL_TITLE.get(cell['cell'], cell['cell'])} | {cell['ratio_p99']:.3f} | {low:.3f}-{high:.3f} | "
            f"{halves[0]} / {halves[1]} | {op} | **{cell['status']}** | {arms}; {errors} errors | {weights} |")


def render_section(result: dict[str, Any]) -> str:
    cells = {c["cell"]: c for c in result.get("cells", [])}
    first: dict[str, Any] = next(iter(cells.values()), {})
    streams = {name: c["policies"]["default"].get("requests", "?") for name, c in cells.items()}
    out = [f"{SECTION} (`python -m bench.streams_adaptive`)", "",
           "The workload of the adaptive matrix's group c stream cells (`bench/adaptive_matrix.py`: SSE streams of "
           "5-40 tokens 50 ms apart, first token 20 ms lognormal, 4 instances x 4 slots per policy; uneven: one "
           "instance at 200 ms), at 60 % of the slots, and the uneven cell at 25 % (`uneven_light`). **Method**: "
           "each policy has 4 emulator instances of its own and the two run at once, stream by stream (stream k "
           "to both listeners, which first alternating with k); halfway through each cell the arms swap instance "
           "sets (then an 8 s warm-up); the Envoy has the two listeners only, alike but for the policy; the A/A "
           "control runs both listeners least_request on a rig of its own. The 95 % interval is an m-out-of-n "
           "bootstrap of paired blocks of 50 stream indices (half the blocks per draw): in the cluster "
           "simulator's A/A the plain bootstrap's interval left 1 out in 6 of 40 runs, this one in 4 of 120. "
           f"Phases of {first.get('segment_seconds', '?')} s; streams per policy: "
           + ", ".join(f"{n} {k}" for k, n in streams.items()) + f". Run {result.get('ran_at', '?')} at "
           f"`{result.get('git_commit', '?')}`, {result.get('wall_seconds', '?')} s, load average "
           + "; ".join(f"{k} {c['load_average'][0]} -> {c['load_average'][1]}" for k, c in cells.items()) + ".",
           "",
           "| cell | adaptive TTFT p99 / least_request's | 95 % interval | ratio per half (sets swapped) | target "
           "| verdict | p99 adaptive vs least_request | weights |",
           "|---|---|---|---|---|---|---|---|"]
    out += [_cell_row(c) for c in cells.values()]
    notes = result.get("notes")
    if notes:
        out += ["", notes]
    return "\n".join(out)


def summary_rows(result: dict[str, Any]) -> list[str]:
    rows = []
    for cell in result.get("cells", []):
        low, high = cell["interval_95"]
        pol = cell["policies"]
        n = pol["default"].get("requests", "?")
        what = {"aa": "A/A control, TTFT p99 of two least_request listeners, identical instances",
                "identical": "adaptive / least_request TTFT p99, token streams, identical instances",
                "uneven": "adaptive / least_request TTFT p99, token streams, one instance 10x slower to its first "
                          "token, 60 % of the slots",
                "uneven_light": "adaptive / least_request TTFT p99, token streams, one instance 10x slower to its "
                                "first token, 25 % of the slots"}.get(cell["cell"], cell["cell"])
        target = {"aa": "holds 1", "identical": f"≤ {cell['target']:g}"}.get(cell["cell"], f"< {cell['target']:g}")
        value = f"{cell['ratio_p99']:.2f} ({pol['adaptive']['p99_ms']:.0f} vs {pol['default']['p99_ms']:.0f} ms)"
        rows.append(f"{ROW_PREFIX}{what} ({n} streams per arm) | {value} | {target} | **{cell['status']}** | "
                    f"95 % interval {low:.2f}-{high:.2f}; {ROW_MARK}, {result.get('ran_at', '?')} |")
        if cell["cell"] == "identical":
            rows.append(f"{ROW_PREFIX}lightest / heaviest adaptive weight on identical instances, lowest at a "
                        f"phase's end | {cell['min_weight_ratio']} | ≥ 0.8 | "
                        f"**{'PASS' if cell['min_weight_ratio'] >= MIN_WEIGHT_RATIO else 'MISS'}** | {ROW_MARK} |")
    return rows


def update_doc(result: dict[str, Any], doc: Path = BENCHMARKS_DOC) -> None:
    """This bench's subsection of section 8 and its rows of the summary table, in place of the old ones.

    Also on a page `make bench` has just rendered (bench/run.py calls this after writing it), which has
    neither: the subsection then goes at the end of section 8, before its wall-time line, and the rows after
    section 8's last summary row."""
    doc.write_text(with_section(doc.read_text(), result))


def with_section(text: str, result: dict[str, Any]) -> str:
    def first_time(body: str, section: str) -> str:
        if SECTION in body:  # the hand-written subsection this one replaced
            start = body.index(SECTION)
            return body[:start] + section + body[body.index("\n\n_Scenario 8 wall time", start):]
        if "\n## 8. " not in body:  # scenario 8 not on the page: at its end
            return body.rstrip("\n") + "\n\n" + section + "\n"
        heading = body.index("\n## 8. ")
        ends = [i for i in (body.find("\n\n_Scenario", heading), body.find("\n## ", heading + 1)) if i >= 0]
        end = min(ends) if ends else len(body.rstrip("\n"))
        return body[:end] + "\n\n" + section + body[end:]

    text = replace_marked(text, DOC_BEGIN, DOC_END, render_section(result), first_time)
    lines = text.split("\n")
    ours = [i for i, line in enumerate(lines) if line.startswith(ROW_PREFIX) and (
        ROW_MARK in line or "adaptive / least_request TTFT p99, token streams" in line
        or "lightest / heaviest adaptive weight on identical instances" in line)]
    rows = summary_rows(result)
    if ours:
        at = ours[0]
    elif eight := [i for i, line in enumerate(lines) if line.startswith(ROW_PREFIX)]:
        at = eight[-1] + 1  # after scenario 8's last row
    elif SUMMARY in lines:  # at the summary table's end
        at = lines.index(SUMMARY) + 1
        while at < len(lines) and not lines[at].startswith("|"):
            at += 1
        while at < len(lines) and lines[at].startswith("|"):
            at += 1
    else:
        return text
    return "\n".join(lines[:at] + rows + [ln for i, ln in enumerate(lines[at:], at) if i not in ours])


def _commit() -> str:
    """HEAD, and the files others had changed in the tree when it ran (the run used them)."""
    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10,
                                 check=False)
        except OSError:
            return ""
        return out.stdout.rstrip()  # porcelain lines start with a space when only the tree changed

    dirty = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines() if line.strip()]
    return git("log", "-1", "--format=%h").strip() + (f" +dirty: {', '.join(dirty)}" if dirty else "")


def _on_term(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # a harness timeout unwinds like Ctrl-C: rig.close() stops Envoy and the emulator


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.streams_adaptive", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", default=",".join(CELLS), help="comma-separated: aa (the A/A control), identical, "
                                                                  "uneven, uneven_light")
    parser.add_argument("--rounds", type=int, default=6, help="phases per cell, half on each instance set (default 6)")
    parser.add_argument("--aa-rounds", type=int, default=4, help="phases of the A/A control (default 4)")
    parser.add_argument("--segment", type=float, default=20.0, help="seconds per phase (default 20)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite this bench's part of docs/benchmarks.md from --output, run nothing")
    args = parser.parse_args(argv)
    if args.report_only:
        if not args.output.exists():
            print(f"{args.output}: no results to report", file=sys.stderr)
            return 2
        update_doc(json.loads(args.output.read_text()))
        return 0
    cells = [c.strip() for c in str(args.cells).split(",") if c.strip()]
    rounds_ok = all(2 <= n <= 40 for n in (args.rounds, args.aa_rounds))
    if not cells or any(c not in CELLS for c in cells) or not rounds_ok or not 1 <= args.segment <= 120:
        print("--cells: a subset of aa,identical,uneven,uneven_light; --rounds and --aa-rounds 2-40; "
              "--segment 1-120 s", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _on_term)

    def log(text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    started, commit = time.time(), _commit()  # the code that runs is the tree's at the start
    results: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="streams-adaptive-") as tmp, pinned({int(PROXY_CPU)}):
            # The A/A control on a rig of its own (its second listener has adaptive off), then the real cells.
            for control, group in ((True, [c for c in cells if c == "aa"]), (False, [c for c in cells if c != "aa"])):
                if not group:
                    continue
                work = Path(tmp) / ("aa" if control else "on-off")
                work.mkdir()
                rig = PairedRig(work, concurrency=4, control=control)  # the matrix's group c rig: 4 slots each
                try:
                    for cell in group:
                        quiet(log, limit=10)  # under bench-lock the machine is ours; the load average lags
                        log(f"cell {cell}")
                        rounds = args.aa_rounds if cell == "aa" else args.rounds
                        results.append(run_cell(rig, cell, args.segment, rounds, log))
                        last = results[-1]
                        log(f"{last['status']} {cell}: TTFT p99 ratio {last['ratio_p99']} (95 % {last['interval_95']}, "
                            f"halves {last['ratio_p99_per_half']}, target {last['target']}): {last['reason']}")
                finally:
                    rig.close()
    except KeyboardInterrupt:
        print("interrupted: Envoy and the emulator stopped, nothing written", file=sys.stderr)
        return 130
    earlier = json.loads(args.output.read_text()) if args.output.exists() else {}
    kept = [c for c in earlier.get("cells", []) if c.get("cell") not in cells]
    out = {"benchmark": "adaptive on vs off for token streams (issue 16)", "machine": machine(),
           "ran_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)), "git_commit": commit,
           "wall_seconds": round(time.time() - started, 1), "cells": kept + results}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2) + "\n")
    log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
