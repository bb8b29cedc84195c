"""The "xDS vs go-control-plane" section of docs/benchmarks.md and its plots, from bench/results/xds-compare.json.

    python -m bench.xds_compare_report [--results FILE] [--before FILE --after FILE]

Per cell (API x streams x endpoints x change kind) and server: the median over rounds of each session's
push p50 / p99 and CPU per push, and the largest RSS. Each of ours is set beside the better of
go-control-plane's two setups for that very figure (the lower p99, the lower CPU, the lower RSS):
push p99 and CPU per push PASS when ours is at most the reference's, RSS when at most 1.5x. With
`--before` / `--after` (default: bench/results/xds-compare-{before,after}.json when present, from one
interleaved run of ours before and after a change), a second table shows the same cells side by side.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.doc_sections import replace_marked

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "xds-compare.json"
BEFORE = REPO / "bench" / "results" / "xds-compare-before.json"
AFTER = REPO / "bench" / "results" / "xds-compare-after.json"
DOC = REPO / "docs" / "benchmarks.md"
IMG = REPO / "docs" / "img"
BEGIN = "<!-- xds-compare:begin (written by bench/xds_compare_report.py from bench/results/xds-compare.json) -->"
END = "<!-- xds-compare:end -->"
REFERENCES = ("linear", "snapshot")
RSS_FACTOR = 1.5
Key = tuple[str, int, int, str]  # api, streams, endpoints, change


def aggregate(document: dict[str, Any]) -> dict[Key, dict[str, dict[str, float]]]:
    """(api, streams, endpoints, change) -> server -> figures (medians over rounds)."""
    runs: dict[Key, dict[str, list[dict[str, float]]]] = defaultdict(lambda: defaultdict(list))
    for session in document["sessions"]:
        if "error" in session:
            continue
        scenario = session["scenario"]
        endpoints = scenario["services"] * scenario["endpoints_per_service"]
        for change, figures in session["changes"].items():
            runs[(session["api"], scenario["streams"], endpoints, change)][session["server"]].append(
                {"p50": figures["all_acked_p50_s"] * 1000, "p99": figures["all_acked_p99_s"] * 1000,
                 "cpu": figures["cpu_s_per_push"] * 1000, "client_cpu": figures["client_cpu_s_per_push"] * 1000,
                 "rss": session["rss_mb"], "load": session.get("loadavg_before", 0.0)})
    out: dict[Key, dict[str, dict[str, float]]] = {}
    for key, servers in runs.items():
        out[key] = {}
        for server, rounds in servers.items():
            figures = {name: statistics.median(r[name] for r in rounds) for name in ("p50", "p99", "cpu",
                                                                                    "client_cpu", "load")}
            figures["rss"] = max(r["rss"] for r in rounds)
            figures["rounds"] = len(rounds)
            out[key][server] = figures
    return out


def verdicts(servers: dict[str, dict[str, float]]) -> dict[str, tuple[float, str]]:
    """figure -> (ours / best reference, PASS or MISS)."""
    ours = servers["ours"]
    refs = [servers[r] for r in REFERENCES if r in servers]
    out = {}
    for figure, allowed in (("p99", 1.0), ("cpu", 1.0), ("rss", RSS_FACTOR)):
        best = min(r[figure] for r in refs)
        ratio = ours[figure] / best if best > 0 else float("inf")
        out[figure] = (ratio, "PASS" if ratio <= allowed else "MISS")
    return out


def _reason(key: Key, servers: dict[str, dict[str, float]], checks: dict[str, tuple[float, str]]) -> str:
    missed = [f for f, (_, verdict) in checks.items() if verdict == "MISS"]
    if not missed:
        return ""
    ours = servers["ours"]
    parts = []
    if "p99" in missed or "cpu" in missed:
        best = min((servers[r] for r in REFERENCES if r in servers), key=lambda r: r["cpu"])
        parts.append(f"CPU per stream per push {ours['cpu'] * 1000 / key[1]:.0f} µs against "
                     f"{best['cpu'] * 1000 / key[1]:.0f} µs: the event loop thread (~70 % of the process's "
                     "CPU) runs, per response and per ACK, grpcio's Cython call path, asyncio's loop and the "
                     "sessions' Python, and the kernel's loopback send; ~11 system calls per stream per push")
        if key[3] == "all-endpoints" and key[2] >= 10_000:
            parts.append("building and encoding the 10,000 endpoints in Python (~30 ms of the push)")
    if "rss" in missed:
        parts.append("the interpreter, grpcio and the agent's imports (~60 MB before any stream)")
    return "; ".join(parts)


def table(data: dict[Key, dict[str, dict[str, float]]]) -> list[str]:
    lines = [
        "| API | streams | endpoints | change | push p50 ms: ours / linear / snapshot "
        "| push p99 ms: ours / linear / snapshot | ours ÷ best | verdict "
        "| CPU ms per push: ours / linear / snapshot | ours ÷ best | verdict | RSS MB: ours / linear / snapshot "
        "| ours ÷ best | verdict (≤ 1.5x) | MISS reason |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in sorted(data, key=lambda k: (k[0] != "sotw", k[1], k[2], k[3] != "one-service")):
        servers = data[key]
        if "ours" not in servers or not any(r in servers for r in REFERENCES):
            continue
        checks = verdicts(servers)

        def trio(figure: str, servers: dict[str, dict[str, float]] = servers) -> str:
            return " / ".join(f"{servers[s][figure]:.0f}" if s in servers else "-" for s in ("ours", *REFERENCES))

        cells = [key[0], f"{key[1]:,}", f"{key[2]:,}", key[3], trio("p50")]
        for figure in ("p99", "cpu", "rss"):
            ratio, verdict = checks[figure]
            cells += [trio(figure), f"{ratio:.2f}", f"**{verdict}**"]
        cells.append(_reason(key, servers, checks))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def before_after_table(before: dict[Key, dict[str, dict[str, float]]],
                 after: dict[Key, dict[str, dict[str, float]]]) -> list[str]:
    lines = ["| API | streams | endpoints | change | push p99 ms before → after | CPU ms per push before → after "
             "| RSS MB before → after |", "|---|---|---|---|---|---|---|"]
    for key in sorted(after, key=lambda k: (k[0] != "sotw", k[1], k[2], k[3] != "one-service")):
        if "ours" not in after[key] or "ours" not in before.get(key, {}):
            continue
        old, new = before[key]["ours"], after[key]["ours"]
        lines.append(f"| {key[0]} | {key[1]:,} | {key[2]:,} | {key[3]} | {old['p99']:.0f} → {new['p99']:.0f} | "
                     f"{old['cpu']:.0f} → {new['cpu']:.0f} | {old['rss']:.0f} → {new['rss']:.0f} |")
    return lines


def plot(data: dict[Key, dict[str, dict[str, float]]], img: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    apis = sorted({k[0] for k in data}, key=lambda a: a != "sotw")
    changes = ("one-service", "all-endpoints")
    for axis_name, fixed_name in (("streams", "endpoints"), ("endpoints", "streams")):
        position, fixed_position = (1, 2) if axis_name == "streams" else (2, 1)
        fixed = max(k[fixed_position] for k in data)
        figure, axes = plt.subplots(len(apis), len(changes), figsize=(10, 3.6 * len(apis)), squeeze=False)
        for row, api in enumerate(apis):
            for column, change in enumerate(changes):
                ax = axes[row][column]
                keys = sorted((k for k in data if k[0] == api and k[3] == change and k[fixed_position] == fixed),
                              key=lambda k: k[position])
                for server, style in (("ours", "o-"), ("linear", "s--"), ("snapshot", "^:")):
                    points = [(k[position], data[k][server]["p99"]) for k in keys if server in data[k]]
                    if points:
                        xs, ys = zip(*points, strict=True)
                        label = {"ours": "modelarts-agent", "linear": "go-control-plane LinearCache",
                                 "snapshot": "go-control-plane SnapshotCache"}[server]
                        ax.plot(xs, ys, style, label=label)
                ax.set_xscale("log")
                ax.set_yscale("log")
                ax.set_xlabel(axis_name)
                ax.set_ylabel("push p99, ms (all streams ACKed)")
                ax.set_title(f"{api}, {change}, {fixed:,} {fixed_name}", fontsize=10)
                ax.grid(True, which="both", alpha=0.3)
        axes[0][0].legend(fontsize=8)
        figure.tight_layout()
        path = img / f"xds-compare-vs-{axis_name}.png"
        figure.savefig(path, dpi=90)
        plt.close(figure)
        written.append(path)
    return written


def render(document: dict[str, Any], before_after: tuple[dict[str, Any], dict[str, Any]] | None,
           plots: list[Path]) -> str:
    data = aggregate(document)
    errors = [s for s in document["sessions"] if "error" in s]
    start, end = (" / ".join(f"{v:.1f}" for v in document.get(k) or []) for k in ("loadavg_start", "loadavg_end"))
    lines = [
        "## xDS server vs go-control-plane (`python -m bench.xds_compare`, part of `make bench`)",
        "",
        f"Measured {document.get('date', '?')} ({document.get('note') or 'no note'}): the agent's ADS server "
        "(`ours`) beside go-control-plane v0.14.0 (`scripts/bench/xds-reference`) with a LinearCache per type "
        "(`linear`, its fit for large EDS sets) and with one SnapshotCache snapshot shared by every node "
        "(`snapshot`). Same client process (`bench/xds_clients.py`: SotW or delta ADS, CDS wildcard + EDS "
        "for every cluster, ACK everything), same resource bytes (the agent's own encoding, uploaded to the "
        "reference), same machine, each server alone in its own process, the three one after the other per "
        f"cell; {document.get('rounds')} round(s) of {document.get('pushes_per_kind')} pushes per change kind "
        "(the SnapshotCache 2 in the cells of a million stream-endpoints or more, where one push takes seconds; "
        "with so few pushes p99 is the slowest push) "
        f"({document.get('wall_seconds', 0) / 60:.1f} minutes; load average 1/5/15 min {start} at the start, "
        f"{end} at the end, on 2 shared cores). Push time: from the commit of a change until every stream "
        "has ACKed the EDS response it caused (client clock). CPU: every thread of the server process, "
        "from before the commit until the last ACK (/proc schedstat); the agent's includes building the "
        "resources from its model, the reference's decoding of the uploaded bytes is not counted. Goal: "
        "push p99 and CPU per push at most the better go-control-plane setup's, RSS within 1.5x.",
        "",
        *table(data),
    ]
    if errors:
        lines += ["", "Sessions that failed (left out of the table): " + "; ".join(
            f"{s['server']} {s['api']} {s['scenario']['streams']}x"
            f"{s['scenario']['services'] * s['scenario']['endpoints_per_service']}: {s['error']}" for s in errors)]
    if before_after is not None:
        before, after = before_after
        start, end = (" / ".join(f"{v:.1f}" for v in after.get(k) or []) for k in ("loadavg_start", "loadavg_end"))
        lines += ["", f"**Ours before and after the per-stream work**, one run on {after.get('date', '?')}, the two "
                  f"versions alternating cell by cell ({before.get('note')}; {after.get('note')}; "
                  f"{after.get('pushes_per_kind')} pushes per change kind; load average {start} at the start, "
                  f"{end} at the end):", "", *before_after_table(aggregate(before), aggregate(after))]
    for path in plots:
        lines += ["", f"![{path.stem}](img/{path.name})"]
    return "\n".join(lines)


def update_doc(doc: Path, section_text: str) -> None:
    """Replace the marked section, or put it in front of the generated part the first time."""
    def first_time(text: str, section: str) -> str:
        marker = text.index("<!-- GENERATED")
        return text[:marker] + section + "\n\n" + text[marker:]

    doc.write_text(replace_marked(doc.read_text(), BEGIN, END, section_text, first_time))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.xds_compare_report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--before", type=Path, default=BEFORE, help="ours before a change (skipped if absent)")
    parser.add_argument("--after", type=Path, default=AFTER, help="ours after it, same run (skipped if absent)")
    parser.add_argument("--doc", type=Path, default=DOC)
    parser.add_argument("--img", type=Path, default=IMG)
    args = parser.parse_args(argv)
    try:
        document = json.loads(args.results.read_text())
        pair = (json.loads(args.before.read_text()), json.loads(args.after.read_text())) \
            if args.before.exists() and args.after.exists() else None
    except (OSError, ValueError) as exc:
        print(f"xds_compare_report: cannot read the results: {exc}", file=sys.stderr)
        return 2
    args.img.mkdir(parents=True, exist_ok=True)
    plots = plot(aggregate(document), args.img)
    update_doc(args.doc, render(document, pair, plots))
    print(f"updated {args.doc} and {', '.join(str(p) for p in plots)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
