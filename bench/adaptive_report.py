"""The adaptive load-balancing section of docs/benchmarks.md, rendered from bench/results/adaptive.json.

`make bench-adaptive` rewrites the section after each full run, so the page never drifts from the
results file; `python -m bench.adaptive_bench --report-only` rebuilds it from the last results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.doc_sections import replace_marked

BEGIN = "<!-- adaptive:begin (written by bench/adaptive_report.py from bench/results/adaptive.json) -->"
END = "<!-- adaptive:end -->"


def _rows(result: dict[str, Any]) -> list[str]:
    lines = ["| scenario | figure | measured | target | verdict | run, load avg before/after |",
             "|---|---|---|---|---|---|"]
    for scenario in result.get("scenarios", []):
        load = scenario.get("load_average_before_after") or []
        where = (f"{scenario.get('group', '')} " if scenario.get("group") else "") \
            + " / ".join(f"{v:.1f}" for v in load)
        for check in scenario["checks"]:
            sign = "≥" if check.get("target_is") == "floor" else "≤"
            target = "= 0" if check["target"] == 0 else f"{sign} {check['target']:g}"
            detail = f" ({check['detail']})" if check.get("detail") else ""
            lines.append(f"| {scenario['title']} | {check['what']} | {check['value']:g}{detail} | {target} | "
                         f"**{check['status']}** | {where} |")
    return lines


def render(result: dict[str, Any], ads: dict[str, Any] | None = None) -> str:
    machine = result.get("machine", {})
    cost = result.get("feedback_loop_cost") or {}
    lines = [
        "## Adaptive load balancing (`make bench-adaptive`)",
        "",
        "Measured side by side in one run with the same emulator instances (the mix each row names), open-loop",
        f"load from {machine.get('load_generator', '?')}, on "
        f"{machine.get('date', '?')} at commit `{machine.get('git_commit', '?')}` ({result.get('rounds')} "
        f"interleaved rounds of {result.get('seconds_per_segment'):g} s per policy, "
        f"{result.get('wall_seconds', 0) / 60:.0f} minutes in all). It is a separate target because",
        "`make bench` is bounded to 15 minutes. Design and discussion: [adaptive-lb.md](adaptive-lb.md).",
        "",
        *_rows(result),
    ]
    if cost:
        lines += [
            "",
            f"The feedback loop's cost, with {cost.get('hosts_in_envoy')} hosts in Envoy: "
            f"{cost.get('agent_cpu_ms_per_read')} ms of agent CPU and {cost.get('envoy_cpu_ms_per_read')} ms of "
            f"Envoy main-thread CPU per read of `/clusters`; at {cost.get('reads_per_second_with_traffic'):g} "
            f"reads/s under traffic that is {cost.get('agent_cpu_percent_with_traffic')} % and "
            f"{cost.get('envoy_cpu_percent_with_traffic')} % of a core "
            f"({cost.get('reads_per_second_idle'):g} reads/s while idle).",
        ]
    plots = [str(s["plot"]) for s in result.get("scenarios", []) if s.get("plot")]
    if machine.get("shared_machine_busy"):
        start, end = (" / ".join(f"{v:.1f}" for v in machine.get(k) or []) for k in ("load_average_start",
                                                                                  "load_average_end"))
        lines += ["", f"Taken on a shared 2-core machine that was busy (load averages 1/5/15 min {start} at the start, "
                  f"{end} at the end): other engineers' tests ran alongside, and their stalls hit whichever "
                  "policy was running."]
    for run in result.get("runs", []):
        start, end = (" / ".join(f"{v:.1f}" for v in run.get(k) or []) for k in ("load_average_start",
                                                                              "load_average_end"))
        lines += ["",
                  f"Run {','.join(run.get('groups', []))}: {run.get('date', '?')} at `{run.get('git_commit', '?')}`, "
                  f"{run.get('wall_seconds', 0) / 60:.1f} minutes under the bench lock, load averages 1/5/15 min "
                  f"{start} at the start, {end} at the end."]
    if result.get("skipped"):
        lines += ["", f"Skipped for the 15-minute bound: {', '.join(result['skipped'])}."]
    lines += ["", "Plots (weights and latency over time): " + (", ".join(f"`{p}`" for p in plots) or "none") + "."]
    if ads is not None:
        machine = ads.get("machine", {})
        lines += [
            "", "### The same over ADS (`python -m bench.adaptive_bench --ads`)", "",
            "Envoy fed by the agent's xDS server (state of the world) instead of EDS files, the weights going "
            f"out as EDS-only cache versions; {ads.get('rounds')} rounds of {ads.get('seconds_per_segment'):g} s, "
            f"on {machine.get('date', '?')} at commit `{machine.get('git_commit', '?')}` "
            "(bench/results/adaptive-ads.json):", "", *_rows(ads)]
    return "\n".join(lines)


def update_doc(doc: Path, result: dict[str, Any], ads: dict[str, Any] | None = None) -> None:
    """Replace the marked section (or, the first time, the hand-written one) with the rendered results."""
    def first_time(text: str, section: str) -> str:
        start = text.index("## Adaptive load balancing")
        return text[:start] + section + "\n\n\n" + text[text.index("<!-- GENERATED", start):]

    doc.write_text(replace_marked(doc.read_text(), BEGIN, END, render(result, ads), first_time))
