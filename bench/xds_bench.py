"""Benchmark of the xDS (ADS) server: push latency, memory per stream and CPU per push.

    python -m bench.xds_bench            # 100/500/1,000 streams x 10/1,000/10,000 endpoints
    python -m bench.xds_bench --quick    # 100 streams x 1,000 endpoints, under 30 s

Each scenario runs in a fresh control-plane process (so memory figures do not mix), with the
simulated Envoys (`bench.xds_clients`: SotW streams subscribed to CDS + EDS, ACKing everything) in
another process. Two kinds of change are pushed several times each: one service's endpoints
("one-service": one ClusterLoadAssignment per stream) and every endpoint ("all-endpoints": every
stream receives all of them again). Results: a table, and JSON in bench/results/xds.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.xds_scenario import CHANGE_KINDS, Scenario, run

RESULTS = Path(__file__).resolve().parent / "results" / "xds.json"
SHAPES = ((1, 10), (10, 100), (20, 500))  # (services, endpoints per service): 10, 1,000, 10,000 endpoints
STREAMS = (100, 500, 1000)
TARGET_STREAMS, TARGET_ENDPOINTS = 1000, 10_000
TARGET_P99_S, TARGET_RSS_MB = 1.0, 300.0
SCENARIO_TIMEOUT = 240

# Not a terminal (e.g. under `make bench`): wide enough that the table is not truncated.
console = Console(width=None if sys.stdout.isatty() else 150)


def scenarios(quick: bool) -> list[Scenario]:
    if quick:
        return [Scenario(streams=100, services=10, endpoints_per_service=100, pushes=5)]
    return [Scenario(streams=n, services=s, endpoints_per_service=e, pushes=10 if n * s * e < 5_000_000 else 8)
            for n in STREAMS for s, e in SHAPES]


def run_isolated(scenario: Scenario) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=run, args=(scenario, sender))
    process.start()
    try:
        if not receiver.poll(SCENARIO_TIMEOUT):
            return {"error": f"no result within {SCENARIO_TIMEOUT}s"}
        result: dict[str, Any] = receiver.recv()
        return result
    except EOFError:
        return {"error": f"scenario process died (exit code {process.exitcode})"}
    finally:
        process.join(15)
        if process.is_alive():
            process.kill()
            process.join(5)


def rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per scenario and change kind (the JSON's `scenarios` table)."""
    out = []
    for result in results:
        scenario = result["scenario"]
        base = {"streams": scenario["streams"], "endpoints": scenario["services"] * scenario["endpoints_per_service"],
                "services": scenario["services"]}
        if "error" in result:
            out.append({**base, "change": "-", "error": result["error"]})
            continue
        for kind in CHANGE_KINDS:
            change = result["changes"][kind]
            out.append({**base, "change": kind,
                        "all_acked_p50_ms": round(change["push_all_acked_p50_s"] * 1000, 1),
                        "all_acked_p99_ms": round(change["push_all_acked_p99_s"] * 1000, 1),
                        "stream_ack_p50_ms": round(change["stream_ack_p50_s"] * 1000, 1),
                        "stream_ack_p99_ms": round(change["stream_ack_p99_s"] * 1000, 1),
                        "cpu_s_per_push": round(change["cpu_s_per_push"], 3),
                        "client_cpu_s_per_push": round(change["client_cpu_s_per_push"], 3),
                        "pushes": change["pushes"],
                        "rss_mb": round(max(result["rss_synced_mb"], result["rss_end_mb"]), 1),
                        "rss_per_stream_kb": round(result["rss_per_stream_kb"], 1),
                        "sync_s": round(result["connect_and_sync_seconds"], 2)})
    return out


def targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    target = next((r for r in results if "error" not in r and r["scenario"]["streams"] == TARGET_STREAMS
                   and r["scenario"]["services"] * r["scenario"]["endpoints_per_service"] == TARGET_ENDPOINTS), None)
    if target is None:
        return []
    p99 = target["changes"]["all-endpoints"]["push_all_acked_p99_s"]
    rss = max(target["rss_synced_mb"], target["rss_end_mb"])
    return [
        {"figure": "full push (every endpoint changes), time until all 1,000 streams ACKed, p99",
         "measured": f"{p99 * 1000:.0f} ms", "target": f"< {TARGET_P99_S * 1000:.0f} ms",
         "verdict": "PASS" if p99 < TARGET_P99_S else "MISS"},
        {"figure": "server RSS with 1,000 streams x 10,000 endpoints", "measured": f"{rss:.0f} MB",
         "target": f"< {TARGET_RSS_MB:.0f} MB", "verdict": "PASS" if rss < TARGET_RSS_MB else "MISS"},
    ]


def print_table(flat: list[dict[str, Any]], checks: list[dict[str, Any]]) -> None:
    table = Table(title="xDS server: time from a snapshot change until every stream ACKed it")
    columns = {"streams": "streams", "endpoints": "endpoints", "change": "change", "all_acked_p50_ms": "all p50 ms",
               "all_acked_p99_ms": "all p99 ms", "stream_ack_p99_ms": "stream p99 ms",
               "cpu_s_per_push": "server cpu s", "client_cpu_s_per_push": "client cpu s", "rss_mb": "rss MB",
               "rss_per_stream_kb": "KB/stream"}
    for header in columns.values():
        table.add_column(header, justify="right")
    for row in flat:
        if "error" in row:
            table.add_row(str(row["streams"]), str(row["endpoints"]), "[red]error", row["error"][:60])
            continue
        table.add_row(*(str(row[c]) for c in columns))
    console.print(table)
    if checks:
        verdicts = Table(title="targets (2-core machine)")
        for column in ("figure", "measured", "target", "verdict"):
            verdicts.add_column(column)
        for check in checks:
            color = "green" if check["verdict"] == "PASS" else "red"
            verdicts.add_row(check["figure"], check["measured"], check["target"],
                             f"[{color}]{check['verdict']}")
        console.print(verdicts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.xds_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 streams x 1,000 endpoints only (< 30 s)")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS})")
    args = parser.parse_args(argv)
    started = time.monotonic()
    results = []
    for scenario in scenarios(args.quick):
        console.log(f"{scenario.streams} streams x {scenario.endpoints} endpoints "
                    f"({scenario.services} services), {scenario.pushes} pushes per change kind")
        result = run_isolated(scenario)
        result.setdefault("scenario", scenario.__dict__)
        results.append(result)
    flat, checks = rows(results), targets(results)
    print_table(flat, checks)
    document = {
        "mode": "quick" if args.quick else "full",
        "cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine(),
        "wall_seconds": round(time.monotonic() - started, 1),
        "method": "server-side ACK bookkeeping; clients (SotW CDS+EDS, ACK all) in a separate process; "
                  "each scenario in a fresh server process",
        "targets": checks, "scenarios": flat, "raw": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    console.log(f"wrote {args.output} in {document['wall_seconds']} s")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
