"""`make bench` / `make bench-quick`: run the benchmark scenarios and write docs/benchmarks.md + docs/img/*.png.

    python -m bench.run                 # every scenario, at most 15 minutes, writes docs/benchmarks.md
    python -m bench.run --quick         # the reduced set (< 2 minutes), report in .cache/bench/quick.md
    python -m bench.run --only overhead,failover
    python -m bench.run --report-only   # rebuild docs/benchmarks.md from the last results

The whole run is bounded: a scenario that would start after the time budget is skipped (and reported
so), and an alarm ends a run that overstays it. Every child process a scenario starts is stopped
when the scenario ends, whether it passed, failed or was interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table as RichTable

from bench import env, report
from bench.scenarios import Ctx, ScenarioResult

# name -> (module, rough seconds needed in full / quick mode; a scenario is skipped when less is left)
SCENARIOS: dict[str, tuple[str, int, int]] = {
    "overhead": ("bench.scenarios.overhead", 160, 20),
    "lb": ("bench.scenarios.lb", 90, 20),
    "failover": ("bench.scenarios.failover", 45, 9),
    "propagation": ("bench.scenarios.propagation", 60, 18),
    "budget": ("bench.scenarios.budget", 230, 22),
    "footprint": ("bench.scenarios.footprint", 100, 14),
    "streaming": ("bench.scenarios.streaming", 240, 25),  # its own bound: streaming.MAX_SECONDS
}
# Run only with --only: scenario 1 (bench/dataplane_bench.py, its own step of `make bench`) measures direct
# vs sidecar beside a hand-written minimal Envoy now.
NOT_BY_DEFAULT = frozenset({"overhead"})
FULL_BUDGET = 15 * 60
QUICK_BUDGET = 2 * 60
XDS_BENCH = env.REPO / "bench" / "xds_bench.py"
STREAMS_ADAPTIVE_RESULTS = env.REPO / "bench" / "results" / "streams-adaptive.json"  # bench/streams_adaptive.py

console = Console()


class BenchTimeout(Exception):
    pass


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise BenchTimeout("the benchmark ran over its time budget")


def _on_term(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def results_dir(quick: bool) -> Path:
    return env.RESULTS_DIR / ("quick" if quick else "full")


def cpu_busy(seconds: float = 1.0) -> float:
    """Fraction of all CPUs busy (anything but idle and iowait) over `seconds`, from /proc/stat."""
    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def wait_for_quiet(limit: float, threshold: float = 0.35, sample: float = 1.0) -> tuple[float, float]:
    """Before a scenario (nothing of ours runs): wait up to `limit` s for other work on the machine to drop
    below `threshold` of its CPUs. Returns (busy fraction when starting, seconds waited)."""
    started = time.monotonic()
    busy = cpu_busy(sample)
    while busy > threshold and time.monotonic() - started < limit:
        busy = cpu_busy(2.0)
    return busy, time.monotonic() - started


def run_scenario(module: ModuleType, ctx: Ctx) -> ScenarioResult:
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    try:
        result: ScenarioResult = module.run(ctx)
    except (BenchTimeout, KeyboardInterrupt):
        raise
    except Exception as exc:
        console.print(f"[red]{module.NAME} failed:[/] {exc}")
        (ctx.workdir / "traceback.txt").write_text(traceback.format_exc())
        result = ScenarioResult(module.NAME, module.TITLE, error=f"{type(exc).__name__}: {exc}"[:400])
    finally:
        ctx.stop_all()
    result.seconds = time.monotonic() - started
    result.raw["loadavg"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    return result


XDS_QUICK_RESULTS = env.RESULTS_DIR / "xds-quick.json"
XDS_FULL_SECONDS = 110  # its full set took 75 s on the reference machine


def run_xds_bench(deadline: float) -> str | None:
    """bench/xds_bench.py (another engineer's) with its own options.

    The full set (it writes bench/results/xds.json) when the 15-minute budget still allows it; else its
    quick mode, written to .cache so the committed full results are not replaced by quick ones.
    """
    if not XDS_BENCH.exists():
        return None
    remaining = deadline - time.monotonic()
    if remaining < 40:
        return "skipped: no time left in the 15-minute budget"
    override = os.environ.get("XDS_BENCH_ARGS")
    if override is not None:
        args = override.split()
    elif remaining >= XDS_FULL_SECONDS:
        args = []
    else:
        args = ["--quick", "--output", str(XDS_QUICK_RESULTS)]
    argv = [sys.executable, "-m", "bench.xds_bench", *args]
    console.log(f"running {' '.join(argv[1:])} (up to {remaining - 10:.0f} s)")
    try:
        proc = subprocess.run(argv, cwd=env.REPO, timeout=remaining - 10, capture_output=True, text=True,
                              check=False, start_new_session=True)
    except subprocess.TimeoutExpired:
        return "timed out"
    if proc.returncode != 0:
        return f"exited with {proc.returncode}: {(proc.stdout + proc.stderr)[-300:]}"
    return "`" + " ".join(["python -m bench.xds_bench", *args]) + "` completed"


def print_summary(results: list[ScenarioResult]) -> None:
    table = RichTable(title="benchmark targets")
    for column in ("scenario", "figure", "measured", "target", "verdict"):
        table.add_column(column)
    colors = {"PASS": "green", "MISS": "red", "info": "dim", "INCONCLUSIVE": "yellow"}
    for result in results:
        if result.error:
            table.add_row(result.name, "[red]error", result.error[:80], "", "[red]ERROR")
        if result.pending:
            table.add_row(result.name, "pending", result.pending[:80], "", "[yellow]pending")
        for check in result.checks:
            if check.passed is None and not check.inconclusive:
                continue
            table.add_row(result.name, check.what, check.value, check.target,
                          f"[{colors[check.status]}]{check.status}")
    console.print(table)


def write_report(results: list[ScenarioResult], facts: dict[str, Any], quick: bool, wall: float,
                 xds_status: str | None) -> Path:
    extra: list[str] = []
    results = list(results)
    if not quick and "overhead" not in {r.name for r in results}:
        from bench.dataplane_bench import load_result  # scenario 1, from bench/results/dataplane.json

        dataplane = load_result()
        if dataplane is not None:
            results.insert(0, dataplane)
    if not quick and XDS_BENCH.exists():
        since = facts.get("started_epoch")
        quick_now = XDS_QUICK_RESULTS.exists() and since is not None and XDS_QUICK_RESULTS.stat().st_mtime >= since
        xds = report.xds_result(XDS_QUICK_RESULTS if quick_now else env.XDS_RESULTS, since=since)
        if quick_now:
            assert xds is not None
            xds.notes.append(f"Not enough of the 15-minute budget was left for its full set; the committed "
                             f"`{env.XDS_RESULTS.relative_to(env.REPO)}` keeps the last full run.")
        if xds is None:
            xds = ScenarioResult("xds", "7. xDS server (bench/xds_bench.py)")
            xds.pending = f"no results in {env.XDS_RESULTS.relative_to(env.REPO)}"
        if xds_status:
            xds.notes.append(f"This run's call of bench/xds_bench.py: {xds_status}.")
        results.append(xds)
    if quick:
        path = env.CACHE / "quick.md"
        text = report.render(results, facts, report.DEFAULT_INTRO, img_prefix="quick-img/", extra_sections=extra,
                             wall_seconds=wall, quick=True)
    else:
        path = env.DOC
        text = report.render(results, facts, report.current_intro(env.DOC), extra_sections=extra,
                             wall_seconds=wall)
    if not quick and STREAMS_ADAPTIVE_RESULTS.exists():
        # bench/streams_adaptive.py's subsection of scenario 8 and its summary rows: it runs on its own (too
        # long for the 15-minute budget), so its last results are put back into the page rendered here.
        from bench.streams_adaptive import with_section

        text = with_section(text, json.loads(STREAMS_ADAPTIVE_RESULTS.read_text(encoding="utf-8")))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def load_results(quick: bool, names: list[str]) -> list[ScenarioResult]:
    found = []
    for name in names:
        path = results_dir(quick) / f"{name}.json"
        if path.exists():
            found.append(ScenarioResult.from_json(json.loads(path.read_text())))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the reduced set (< 2 minutes); report in .cache")
    parser.add_argument("--only", help=f"comma-separated scenarios out of: {', '.join(SCENARIOS)}")
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from the last results")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--note", help="with --only: why these scenarios were re-run (shown in the report)")
    parser.add_argument("--budget-seconds", type=float, help="time budget (default 900, quick 120)")
    args = parser.parse_args(argv)

    default = [n for n in SCENARIOS if n not in NOT_BY_DEFAULT]
    names = default if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(unknown)}")
    if args.report_only:
        loaded = load_results(args.quick, names)
        facts = json.loads((results_dir(args.quick) / "facts.json").read_text())
        path = write_report(loaded, facts, args.quick, float(facts.get("wall_seconds", 0)), None)
        console.print(f"report: {path}")
        return 0

    budget = args.budget_seconds or (QUICK_BUDGET if args.quick else FULL_BUDGET)
    started = time.monotonic()
    deadline = started + budget
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(int(budget) + 60)  # the hard stop, past the per-scenario checks

    console.rule("modelarts-agent benchmarks" + (" (quick)" if args.quick else ""))
    env.build_tools()
    workroot = env.REPO / "run" / ("bench-quick" if args.quick else "bench")
    shutil.rmtree(workroot, ignore_errors=True)
    img_dir = env.CACHE / "quick-img" if args.quick else env.IMG_DIR
    out_dir = results_dir(args.quick)
    out_dir.mkdir(parents=True, exist_ok=True)
    facts = env.machine_facts()
    facts["started_epoch"] = time.time()
    console.log(f"{facts['nproc']} cores ({facts['cpu_model']}), {facts['ram_gib']} GiB, Envoy "
                f"{facts['envoy_version']}, commit {facts['git_commit']}; budget {budget:.0f} s")

    results: list[ScenarioResult] = []
    xds_status: str | None = None
    interrupted = False
    progress = Progress(SpinnerColumn(), TextColumn("[bold]{task.fields[scenario]}"), BarColumn(),
                        TextColumn("{task.completed}/{task.total}"), TextColumn("{task.description}"),
                        TimeElapsedColumn(), console=console, transient=False)
    try:
        with progress:
            task = progress.add_task("", total=len(names), scenario="")
            for name in names:
                module_name, full_need, quick_need = SCENARIOS[name]
                need = quick_need if args.quick else full_need
                if time.monotonic() + need > deadline:
                    results.append(ScenarioResult(name, importlib.import_module(module_name).TITLE,
                                                  pending=f"skipped: the {budget:.0f} s time budget was spent"))
                    progress.advance(task)
                    continue
                module = importlib.import_module(module_name)
                workdir = workroot / name
                workdir.mkdir(parents=True, exist_ok=True)
                progress.update(task, scenario=name, description="waiting for other work on the machine to calm")
                still_needed = sum(int(SCENARIOS[n][2 if args.quick else 1]) for n in names[names.index(name):])
                if not args.quick and not args.only and XDS_BENCH.exists():
                    still_needed += XDS_FULL_SECONDS
                busy, waited = wait_for_quiet(0.0 if args.quick else min(
                    25.0, max(0.0, deadline - time.monotonic() - still_needed)), sample=0.5 if args.quick else 1.0)
                progress.update(task, scenario=name, description="starting")
                ctx = Ctx(workdir, img_dir, args.quick, console,
                          on_step=lambda text: progress.update(task, description=text))
                result = run_scenario(module, ctx)
                result.raw["busy_before"] = [round(busy, 2), round(waited, 1)]
                result.raw["ran_at"] = env.machine_facts_date()
                results.append(result)
                (out_dir / f"{name}.json").write_text(json.dumps(result.to_json(), indent=1, default=str))
                verdicts = " ".join(c.status for c in result.checks if c.passed is not None)
                console.log(f"{name}: {result.seconds:.0f} s {verdicts}"
                            + (f" [red]{result.error}" if result.error else ""))
                progress.advance(task)
            if not args.quick and not args.only:
                progress.update(task, scenario="xds", description="bench/xds_bench.py")
                xds_status = run_xds_bench(deadline)
    except (BenchTimeout, KeyboardInterrupt) as exc:
        interrupted = True
        console.print(f"[red]interrupted: {exc or 'signal'}; every child process was stopped")
    finally:
        signal.alarm(0)
    wall = time.monotonic() - started
    facts["wall_seconds"] = round(wall, 1)
    previous_path = out_dir / "facts.json"
    if args.only and previous_path.exists():
        # A partial run: the page still describes the last whole run, plus which scenarios were re-run when.
        previous = json.loads(previous_path.read_text())
        rerun = {"scenarios": names, "date": facts["date"], "git_commit": facts["git_commit"],
                 "wall_seconds": round(wall, 1), "note": args.note or ""}
        facts = {**previous, "reruns": [*previous.get("reruns", []), rerun]}
        wall = float(previous.get("wall_seconds", wall))
    (out_dir / "facts.json").write_text(json.dumps(facts, indent=1))
    if args.only:
        # A partial run refreshes its scenarios and keeps the last results of the others.
        have = {r.name for r in results}
        results = [*results, *[r for r in load_results(args.quick, default) if r.name not in have]]
        results.sort(key=lambda r: list(SCENARIOS).index(r.name) if r.name in SCENARIOS else 99)
    print_summary(results)
    path = write_report(results, facts, args.quick, wall, xds_status)
    console.print(f"report: {path}   (wall time {wall:.0f} s)")
    if interrupted or any(r.error for r in results):
        return 1
    missed = [c for r in results for c in r.checks if c.passed is False]
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
