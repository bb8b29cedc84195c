"""`make bench-dataplane` (and the first step of `make bench`): scenario 1, the data plane against a
hand-written minimal Envoy, with its cost table and worker-thread figures (bench/scenarios/dataplane.py).

    python -m bench.dataplane_bench            # about 7 minutes; bench/results/dataplane.json + docs
    python -m bench.dataplane_bench --quick    # about 40 s; .cache/bench/dataplane-quick.md only

A separate step because it takes half of `make bench`'s 15-minute budget on its own. The full run
writes bench/results/dataplane.json (the whole ScenarioResult) and splices its section and its summary
rows into docs/benchmarks.md, leaving every other scenario's figures as they are; `bench.run` renders
the same section from that file when it rewrites the page.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
from pathlib import Path

from rich.console import Console

from bench import env, report
from bench.run import _on_alarm, _on_term, run_scenario
from bench.scenarios import Ctx, ScenarioResult, dataplane

TIME_LIMIT = 11 * 60  # the hard stop; a full run takes about 7 minutes
RESULTS = dataplane.RESULTS_JSON
SECTION_PREFIX = "## 1. "  # this scenario's section; also the old scenario 1 (overhead) it replaces
SUMMARY_HEADING = "## Summary: every figure beside its target"


def load_result(path: Path = RESULTS) -> ScenarioResult | None:
    try:
        return ScenarioResult.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def section(result: ScenarioResult, img_prefix: str = "img/") -> str:
    text = report.render([result], {"nproc": os.cpu_count()}, "", img_prefix=img_prefix)
    return text[text.index(f"## {result.title}"):].rstrip() + "\n"


def summary_lines(result: ScenarioResult) -> list[str]:
    table = report.md_table(["scenario", "figure", "measured", "target", "verdict", "note"],
                            report.summary_rows([result]))
    return table.splitlines()[2:]


def splice(doc: str, result: ScenarioResult) -> str:
    """`doc` with scenario 1's summary rows and section replaced by `result`'s (others untouched)."""
    lines = doc.splitlines()
    if SUMMARY_HEADING in lines:
        start = lines.index(SUMMARY_HEADING)
        header = next(i for i in range(start, len(lines)) if lines[i].startswith("|---"))
        end = header + 1
        while end < len(lines) and lines[end].startswith("|"):
            end += 1
        kept = [line for line in lines[header + 1:end] if not line.startswith("| 1. ")]
        lines[header + 1:end] = summary_lines(result) + kept
    text = "\n".join(lines) + "\n"
    new = section(result)
    begin = text.find("\n" + SECTION_PREFIX)
    if begin >= 0:
        stop = text.find("\n## ", begin + 1)
        return text[:begin + 1] + new + ("\n" + text[stop + 1:] if stop >= 0 else "")
    after = text.find("\n## ", text.find(SUMMARY_HEADING) + 1) if SUMMARY_HEADING in text else -1
    if after < 0:
        return text.rstrip() + "\n\n" + new
    return text[:after + 1] + new + "\n" + text[after + 1:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dataplane_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="direct, minimal and generated only, 2 short rounds")
    parser.add_argument("--report-only", action="store_true", help="re-render the last results into the page")
    args = parser.parse_args(argv)
    console = Console()
    if args.report_only:
        result = load_result()
        if result is None:
            console.print(f"no results in {RESULTS}")
            return 2
        result = dataplane.rerender(result)  # this code's wording of the stored figures
        RESULTS.write_text(json.dumps(result.to_json(), indent=1, default=str), encoding="utf-8")
        env.DOC.write_text(splice(env.DOC.read_text(encoding="utf-8"), result), encoding="utf-8")
        return 0

    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(TIME_LIMIT)
    env.build_tools()
    workdir = env.REPO / "run" / ("bench-dataplane-quick" if args.quick else "bench-dataplane")
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    img_dir = env.CACHE / "quick-img" if args.quick else env.IMG_DIR
    ctx = Ctx(workdir, img_dir, args.quick, console, on_step=lambda text: console.log(text))
    try:
        result = run_scenario(dataplane, ctx)
    finally:
        signal.alarm(0)
    result.raw["ran_at"] = env.machine_facts_date()
    result.raw["git_commit"] = env.machine_facts()["git_commit"]
    if result.error:
        console.print(f"[red]{result.error}")
        return 1
    if args.quick:
        path = env.CACHE / "dataplane-quick.md"
        path.write_text(section(result, img_prefix="quick-img/"), encoding="utf-8")
    else:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result.to_json(), indent=1, default=str), encoding="utf-8")
        path = env.DOC
        path.write_text(splice(path.read_text(encoding="utf-8"), result), encoding="utf-8")
    for check in result.checks:
        console.print(f"{check.status:>5}  {check.what}: {check.value} (target {check.target})")
    console.print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
