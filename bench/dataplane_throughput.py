"""Closed-loop throughput, generated sidecar config vs the hand-written minimal Envoy, measured so the
ratio can be trusted: many short interleaved blocks, a bootstrap confidence interval of the ratio, and
each core's busy share, so it shows whether Envoy's core or the load generator's was the limit.

    python -m bench.dataplane_throughput                      # about 3 minutes
    python -m bench.dataplane_throughput --blocks 4 --window 1  # a smoke run

Same layout as scenario 1 (bench/scenarios/dataplane.py): vegeta and the Go upstream on core 0, each
Envoy with one worker on core 1, and this process (which runs the adaptive loop of the generated arm)
on core 0 too, so nothing but Envoy runs on Envoy's core. Each block visits every arm at every
connection count in a fresh random order. Envoy's CPU time per request is the firmer figure: when
Envoy's core is the limit, throughput is 1 / (CPU per request), whatever the block's noise.
Writes bench/results/dataplane-throughput.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from rich.console import Console

from agent.adaptive.envoy_admin import AdminReader
from agent.envoy.access_log import BODY_TAG
from bench import env, report
from bench.env import LOADGEN_CPU
from bench.loadgen import Attack, Target, Upstream
from bench.scenarios import Check, Ctx, ScenarioResult, proc_cpu_seconds
from bench.scenarios.dataplane_arms import GENERATED, VARIANTS, Arm, Variant, generated_arm, minimal_arm


def _timing_loggers(listener: dict[str, Any]) -> list[dict[str, Any]]:
    """The adaptive timing loggers (counters named `adaptive_*`) of a rendered listener."""
    out = []
    for chain in listener.get("filter_chains", []):
        for network_filter in chain.get("filters", []):
            for log in network_filter.get("typed_config", {}).get("access_log", []):
                counters = log.get("typed_config", {}).get("counters") or [{}]
                if str(counters[0].get("stat", {}).get("name", "")).startswith("adaptive_"):
                    out.append(log)
    return out


def _drop_timing_filter(listener: dict[str, Any]) -> None:
    """The adaptive timing logger without any filter (it then counts every answer): the floor of its cost."""
    for log in _timing_loggers(listener):
        log.pop("filter", None)


# The timing logger's filter before issue 18's change (agent/envoy/access_log.py): a CEL expression, no
# `body` tag on the answers counter.
CEL_FILTER = "response.code >= 200 && response.code < 300 && response.size > 0"


def _cel_timing_filter(listener: dict[str, Any]) -> None:
    """The adaptive timing logger as it was: its answers picked by a CEL filter, without the `body` tag."""
    for log in _timing_loggers(listener):
        log["filter"] = {"extension_filter": {"name": "envoy.access_loggers.extension_filters.cel", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
            "expression": CEL_FILTER}}}
        for counter in log["typed_config"]["counters"]:
            counter["stat"]["tags"] = [t for t in counter["stat"]["tags"] if t["name"] != BODY_TAG]


def _one_tag(listener: dict[str, Any]) -> None:
    """The timing counters with cluster and host in one tag instead of two: less per-request tag formatting
    and stat-name encoding (issue 18's run at 15:14 UTC: no measurable saving)."""
    for log in _timing_loggers(listener):
        for counter in log["typed_config"]["counters"]:
            counter["stat"]["tags"] = [t for t in counter["stat"]["tags"] if t["name"] not in ("cluster", "instance")]
            counter["stat"]["tags"].append({"name": "upstream", "value_format": "%UPSTREAM_CLUSTER%/%UPSTREAM_HOST%"})


# Splits of the adaptive loop's cost, beside the cost table's variants: the loop's admin reads alone
# (`logger-only` renders the generated config but does not run the loop), and the timing logger's filter.
LOGGER_ONLY = "logger-only"
EXTRA = {"cel-filter": Variant("cel-filter", "the adaptive timing logger with its former CEL filter",
                               listener_edit=_cel_timing_filter),
         "no-timing-filter": Variant("no-timing-filter", "the adaptive timing logger without a filter",
                                     listener_edit=_drop_timing_filter),
         LOGGER_ONLY: Variant(LOGGER_ONLY, "the adaptive timing logger, the loop not running"),
         "one-tag": Variant("one-tag", "the adaptive timing counters with one tag instead of two",
                            listener_edit=_one_tag)}
RESULTS = env.REPO / "bench" / "results" / "dataplane-throughput.json"
SEED = 20261202


@dataclass
class Visit:
    arm: str
    workers: int
    block: int
    rps: float  # vegeta: successful requests/s
    requests: int
    envoy_cpu_us: float  # Envoy utime+stime per request
    envoy_busy: float  # Envoy CPU seconds / window
    core_busy: tuple[float, ...]  # each core's non-idle share over the window


def core_ticks() -> list[tuple[int, int]]:
    """(total, idle) jiffies per core from /proc/stat."""
    out = []
    with open("/proc/stat") as handle:
        for line in handle:
            name, *values = line.split()
            if name.startswith("cpu") and name != "cpu":
                fields = [int(v) for v in values]
                out.append((sum(fields), fields[3] + fields[4]))
    return out


def closed_loop(ctx: Ctx, arm: Arm, name: str, workers: int, window: float, block: int) -> Visit:
    with arm:
        ticks0 = core_ticks()
        cpu0 = proc_cpu_seconds(arm.pid) if arm.pid else 0.0
        res = Attack(name, [Target(arm.url)], ctx.workdir, rate=0, duration=window, max_workers=workers,
                     per_request=False).start().wait()
        used = (proc_cpu_seconds(arm.pid) - cpu0) if arm.pid else float("nan")
        ticks1 = core_ticks()
    requests = int(res.summary.get("requests", 0))
    busy = tuple(1 - (i1 - i0) / max(1, t1 - t0) for (t0, i0), (t1, i1) in zip(ticks0, ticks1, strict=True))
    return Visit(arm.name, workers, block, float(res.summary.get("throughput", 0.0)), requests,
                 used / requests * 1e6 if requests else float("nan"), used / window, busy)


def bootstrap_median_ci(values: list[float], rounds: int = 4000, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the median of `values` (seeded: the same data gives the same text)."""
    data = np.asarray([v for v in values if not np.isnan(v)])
    if len(data) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(SEED)
    medians = np.median(rng.choice(data, size=(rounds, len(data)), replace=True), axis=1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(medians, tail)), float(np.percentile(medians, 100 - tail))


def ratios(visits: list[Visit], arm: str, base: str, workers: int, attr: str) -> list[float]:
    """Per-block ratio arm / base of one figure, at one connection count."""
    by = {(v.arm, v.block): getattr(v, attr) for v in visits if v.workers == workers}
    blocks = sorted({v.block for v in visits})
    return [by[(arm, b)] / by[(base, b)] for b in blocks if (arm, b) in by and (base, b) in by and by[(base, b)] > 0]


COLUMNS = ["arm", "connections", "rps, median [range]", "Envoy CPU/request (µs)", "Envoy busy",
           "core 0 / core 1 busy", "rps / minimal, median [range] (95% CI)", "CPU/request / minimal (95% CI)"]


def rows(visits: list[Visit]) -> list[list[str]]:
    arms = sorted({v.arm for v in visits}, key=lambda a: (a != "minimal", a != "generated", a))
    out = []
    for w in sorted({v.workers for v in visits}):
        for arm in arms:
            xs = [v for v in visits if v.arm == arm and v.workers == w]
            rps = [v.rps for v in xs]
            cpu = [v.envoy_cpu_us for v in xs]
            cores = " / ".join(f"{np.median([v.core_busy[i] for v in xs]):.0%}" for i in range(len(xs[0].core_busy)))
            cells = [arm, str(w), f"{np.median(rps):,.0f} [{min(rps):,.0f} to {max(rps):,.0f}]",
                     f"{np.nanmedian(cpu):.0f}", f"{np.nanmedian([v.envoy_busy for v in xs]):.0%}", cores]
            if arm == "minimal":
                cells += ["—", "—"]
            else:
                r = ratios(visits, arm, "minimal", w, "rps")
                c = ratios(visits, arm, "minimal", w, "envoy_cpu_us")
                lo, hi = bootstrap_median_ci(r)
                clo, chi = bootstrap_median_ci(c)
                cells += [f"{np.median(r):.3f} [{min(r):.2f} to {max(r):.2f}] ({lo:.3f} to {hi:.3f})",
                          f"{np.median(c):.3f} ({clo:.3f} to {chi:.3f})"]
            out.append(cells)
    return out


def markdown(visits: list[Visit]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows(visits)])


def load_record(path: Path = RESULTS) -> dict[str, Any] | None:
    try:
        record: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        record["visits"] = [Visit(**{**v, "core_busy": tuple(v["core_busy"])}) for v in record["visits"]]
        return record
    except (OSError, ValueError, TypeError, KeyError):
        return None


def report_into(result: ScenarioResult, record: dict[str, Any], target: float, workers: int) -> None:
    """The dedicated run's throughput verdict, decided by the 95% interval of the ratio, and its table."""
    visits: list[Visit] = record["visits"]
    r = ratios(visits, "generated", "minimal", workers, "rps")
    c = ratios(visits, "generated", "minimal", workers, "envoy_cpu_us")
    if not r:
        return
    lo, hi = bootstrap_median_ci(r)
    clo, chi = bootstrap_median_ci(c)
    ratio, cpu_ratio = float(np.median(r)), float(np.median(c))

    def busy(arm: str) -> float:
        return float(np.median([v.envoy_busy for v in visits if v.arm == arm and v.workers == workers]))

    def median_rps(arm: str) -> float:
        return float(np.median([v.rps for v in visits if v.arm == arm and v.workers == workers]))

    passed = True if lo >= target else False if hi < target else None
    load = record.get("loadavg", [float("nan")] * 2)
    note = (f"{record['blocks']} blocks of {record['window']:g} s, every arm in each, in a random order; 95% interval "
            f"of the median ratio {lo:.3f} to {hi:.3f}, per-block ratios {min(r):.2f} to {max(r):.2f}; "
            f"{record['ran_at']}, load average {load[0]:.2f} at the start, {load[1]:.2f} at the end")
    if passed is None:
        # Straddling the target: say which core was the limit, and what the steadier CPU figure implies.
        loadgen = float(np.median([v.core_busy[int(LOADGEN_CPU)] for v in visits
                                   if v.arm == "minimal" and v.workers == workers]))
        note += (f"; the load generator's core was {loadgen:.0%} busy and the minimal Envoy's "
                 f"{busy('minimal'):.0%}, so the load generator, not Envoy, set the pace; the generated config "
                 f"costs Envoy {cpu_ratio:.2f}x the minimal one's CPU per request (95% interval {clo:.2f} to "
                 f"{chi:.2f}), about {1 / cpu_ratio:.2f}x the throughput where Envoy's core is the limit")
    if passed is False:
        note += (f"; the generated config costs Envoy {cpu_ratio:.2f}x the minimal one's CPU per request (95% "
                 f"interval {clo:.2f} to {chi:.2f}), and Envoy, {busy('generated'):.0%} busy, is close to the limit")
    if passed is not True and any(v.arm == "no-adaptive" for v in visits):
        no_adaptive = float(np.median(ratios(visits, "no-adaptive", "minimal", workers, "envoy_cpu_us")))
        note += f"; without the adaptive loop {no_adaptive:.2f}x, its largest single share"
    result.checks.append(Check("closed-loop max throughput, generated / minimal, dedicated run "
                               "(`python -m bench.dataplane_throughput`)",
                               f"{ratio:.3f}x ({median_rps('generated'):,.0f} vs {median_rps('minimal'):,.0f} rps)",
                               f"≥ {target:.2f}x", passed, note, inconclusive=passed is None))
    result.tables.append(report.table(
        f"Closed-loop throughput, dedicated run (`python -m bench.dataplane_throughput`, {record['blocks']} "
        f"interleaved blocks of {record['window']:g} s, {record['ran_at']}, load average {load[0]:.2f} / "
        f"{load[1]:.2f})", COLUMNS, rows(visits),
        note=f"Envoy CPU per adaptive-loop sample (its /clusters and /stats reads, 20 a second): "
             f"{record.get('admin_sample_envoy_cpu_us', float('nan')):.0f} µs. "
             "Arms beyond minimal and generated are the generated config with one thing off: no-adaptive (the "
             "loop and its timing logger), cel-filter (the timing logger's former CEL filter), no-timing-filter "
             "(that logger with no filter), logger-only (the logger, the loop not running), no-stream-stats, "
             "no-retries, no-endpoint-stats (as in the cost table). Neither core is fully busy: the closed loop "
             "alternates between Envoy's core and the load generator's, so the CPU per request is the firmer "
             "figure (with Envoy the limit, throughput is its inverse)." + (
                 " The adaptive loop, the largest single share, stays on by default: it is what moves load off a "
                 "slow instance (scenario 2, docs/adaptive-lb.md); a sidecar that needs that share of Envoy's "
                 "throughput back turns it off for the service (`lb: {adaptive: false}`)."
                 if any(v.arm == "no-adaptive" for v in visits) else "")))


def admin_read_cost(arm: Arm, url: str, reads: int = 200) -> float:
    """Envoy CPU (µs) per adaptive-loop sample: the loop's own reader, `reads` times, Envoy otherwise idle."""
    assert arm.pid is not None
    reader = AdminReader([url])
    try:
        reader.read(["llm"])
        cpu0 = proc_cpu_seconds(arm.pid)
        for _ in range(reads):
            reader.read(["llm"])
        return (proc_cpu_seconds(arm.pid) - cpu0) / reads * 1e6
    finally:
        reader.close()


# Each admin read the loop makes or could make, for what it costs Envoy's main thread (the reader picks).
ADMIN_PATHS = ("/clusters?format=json", "/clusters",
               "/stats?format=json&type=Counters&filter=%5Emodelarts%5C.adaptive_",
               "/stats?format=json&usedonly&type=Counters&filter=%5Emodelarts%5C.adaptive_",
               "/stats?usedonly&type=Counters&filter=%5Emodelarts%5C.adaptive_")


def admin_path_costs(arm: Arm, url: str, reads: int = 1000) -> dict[str, float]:
    """Envoy CPU (µs) per GET of each of ADMIN_PATHS, `reads` times each, Envoy otherwise idle."""
    assert arm.pid is not None
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=2)
    out: dict[str, float] = {}
    try:
        for path in ADMIN_PATHS:
            conn.request("GET", path)
            conn.getresponse().read()
            cpu0 = proc_cpu_seconds(arm.pid)
            for _ in range(reads):
                conn.request("GET", path)
                conn.getresponse().read()
            out[path] = (proc_cpu_seconds(arm.pid) - cpu0) / reads * 1e6
    finally:
        conn.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dataplane_throughput",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--window", type=float, default=1.5, help="seconds per closed-loop visit")
    parser.add_argument("--workers", default="32,128", help="vegeta connections, comma-separated")
    parser.add_argument("--variants", default="no-adaptive",
                        help="generated-config variants (bench/scenarios/dataplane_arms.py names), comma-separated")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    console = Console()
    try:
        workers = [int(w) for w in args.workers.split(",") if w]
    except ValueError:
        console.print(f"--workers: not a list of integers: {args.workers!r}")
        return 2
    known = {v.name: v for v in VARIANTS} | EXTRA
    chosen = [name for name in args.variants.split(",") if name]
    unknown = [name for name in chosen if name not in known]
    if unknown or args.blocks < 2 or args.window <= 0 or not workers:
        console.print(f"bad arguments: unknown variants {unknown} (known: {sorted(known)}), or blocks < 2, "
                      "window <= 0, no workers")
        return 2
    os.sched_setaffinity(0, {int(LOADGEN_CPU)})  # this process (and the adaptive loop it runs) off Envoy's core
    env.build_tools()
    workdir = env.REPO / "run" / "bench-dataplane-throughput"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    ctx = Ctx(workdir, env.CACHE / "quick-img", False, console, on_step=console.log)
    load = [os.getloadavg()[0]]
    visits: list[Visit] = []
    try:
        upstream = ctx.track(Upstream("tput-0", "127.0.0.34", workdir)).start()
        addr = (upstream.ip, upstream.port)
        arms = {"minimal": minimal_arm(ctx, "minimal", addr), "generated": generated_arm(ctx, GENERATED, addr)}
        for name in chosen:
            arm = generated_arm(ctx, known[name], addr)
            arms[name] = Arm(name, arm.url, arm.pid, admin=arm.admin) if name == LOGGER_ONLY else arm
        for name, arm in arms.items():
            with arm:
                Attack(f"warm-{name}", [Target(arm.url)], workdir, rate=0, duration=1.0, max_workers=32,
                       per_request=False).start().wait()
        shuffle = random.Random(SEED)
        for block in range(args.blocks):
            order = [(name, w) for name in arms for w in workers]
            shuffle.shuffle(order)
            console.log(f"block {block + 1}/{args.blocks}")
            for name, w in order:
                visits.append(closed_loop(ctx, arms[name], f"{name}-{w}-{block}", w, args.window, block))
        admin = admin_read_cost(arms["generated"], arms["generated"].admin, reads=1000)
        paths = admin_path_costs(arms["generated"], arms["generated"].admin)
    finally:
        ctx.stop_all()
    load.append(os.getloadavg()[0])
    table = markdown(visits)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    record = {"ran_at": env.machine_facts_date(), "git_commit": env.machine_facts()["git_commit"],
              "loadavg": load, "admin_sample_envoy_cpu_us": admin,
              "admin_path_envoy_cpu_us": paths, "blocks": args.blocks, "window": args.window,
              "visits": [asdict(v) for v in visits], "table": table}
    args.output.write_text(json.dumps(record, indent=1), encoding="utf-8")
    console.print(f"load average at start / end: {load[0]:.2f} / {load[1]:.2f}")
    print(table)
    console.print(f"Envoy CPU per adaptive-loop sample (/clusters + /stats reads): {admin:.0f} µs")
    for path, cost in paths.items():
        console.print(f"  {path}: {cost:.0f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
