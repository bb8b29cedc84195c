"""The agent's xDS server against go-control-plane, side by side: same clients, same bytes, same machine.

    python -m bench.xds_compare            # 100/1,000 streams x 10/1,000/10,000 endpoints, SotW and delta
    python -m bench.xds_compare --quick    # 100 streams x 1,000 endpoints, SotW, one push each (smoke)

Servers: the agent (`ours`), go-control-plane with a LinearCache per type (`linear`, its fit for large
EDS sets) and with a SnapshotCache shared by every node (`snapshot`); see `bench.xds_servers`. For each
cell (API x streams x endpoints) the three run one after the other in a fresh process each, and the
rounds alternate the order (ours, linear, snapshot, then snapshot, linear, ours, ...). The clients
(`bench.xds_clients.run_marked_clients`, one process) open the streams, sync, and then, per push, record
when each stream has ACKed the first EDS response after the change. Two kinds of change: one service's
endpoints ("one-service") and every endpoint ("all-endpoints").

Reported per cell: time until every stream ACKed (p50, p99 over pushes), per-stream ACK p99, server CPU
per push (all its threads, /proc schedstat), server RSS, client CPU per push. Results:
bench/results/xds-compare.json; `bench.xds_compare_report` renders the table and plots.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from bench.xds_clients import run_marked_clients
from bench.xds_scenario import CHANGE_KINDS, Scenario
from bench.xds_servers import OursServer, ReferenceServer, Server, cpu_seconds, rss_mb, wait_gone

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "xds-compare.json"
CACHE = Path(os.environ.get("MODELARTS_AGENT_CACHE", REPO / ".cache"))
REFERENCE = CACHE / "bench" / "bin" / "xds-reference"
SHAPES = ((1, 10), (10, 100), (20, 500))  # (services, endpoints per service): 10, 1,000, 10,000 endpoints
STREAMS = (100, 1000)
APIS = ("sotw", "delta")
SERVERS = ("ours", "linear", "snapshot")
SESSION_SECONDS = 300  # one server x one cell, hard bound
# The SnapshotCache marshals every resource for every stream: in the big cells one push takes seconds, so
# it gets fewer pushes there (fewer repetitions, never fewer cells) to keep the grid in ~10 minutes.
HEAVY_CELL = 1_000_000  # streams x endpoints
HEAVY_PUSHES = 2
PUSH_TIMEOUT = 60.0


def log(message: str) -> None:
    print(f"[xds-compare {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def make_server(name: str, scenario: Scenario) -> Server:
    if name == "ours":
        return OursServer(scenario)
    return ReferenceServer(REFERENCE, name, scenario, deadline_seconds=SESSION_SECONDS)


def _percentile(values: list[float], q: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


class Clients:
    """The client process(es) for one session."""

    def __init__(self, api: str, port: int, streams: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._control, child = context.Pipe()
        self._process = context.Process(target=run_marked_clients,
                                        args=(f"127.0.0.1:{port}", api, 0, streams, child), daemon=True)
        self._process.start()
        if not self._control.poll(120):
            raise TimeoutError("the clients did not open their streams")
        self._control.recv()

    def arm(self) -> None:
        self._control.send("arm")
        if not self._control.poll(15) or self._control.recv() != "armed":
            raise TimeoutError("the clients did not arm")

    def wait(self, seconds: float) -> tuple[list[float], int]:
        self._control.send(("wait", seconds))
        if not self._control.poll(seconds + 15):
            raise TimeoutError("the clients did not answer")
        reply = self._control.recv()
        if reply[0] != "times":
            raise TimeoutError(f"only {reply[1]} streams got the push within {seconds:.0f} s")
        return reply[1], reply[2]

    def cpu(self) -> float:
        self._control.send("cpu")
        return float(self._control.recv())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._control.send("stop")
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)


def run_session(server_name: str, api: str, scenario: Scenario) -> dict[str, Any]:
    """One server, one cell: connect, sync, push each change kind `scenario.pushes` times."""
    started = time.monotonic()
    server = make_server(server_name, scenario)
    clients: Clients | None = None
    result: dict[str, Any] = {"server": server_name, "api": api, "scenario": asdict(scenario)}
    try:
        result["rss_idle_mb"] = rss_mb(server.pid)
        clients = Clients(api, server.port, scenario.streams)
        times, largest = clients.wait(120)
        result["sync_s"] = max(times) - started
        result["eds_response_bytes"] = largest
        time.sleep(0.5)
        result["rss_synced_mb"] = rss_mb(server.pid)
        result["changes"] = {}
        generation = 0
        for kind in CHANGE_KINDS:
            pushes: list[float] = []
            per_stream: list[float] = []
            cpu: list[float] = []
            client_cpu = clients.cpu()
            for push in range(scenario.pushes):
                generation += 1
                changed = {push % scenario.services} if kind == "one-service" else set(range(scenario.services))
                server.stage(generation, changed)
                clients.arm()
                cpu_before = cpu_seconds(server.pid)
                committed_at = time.monotonic()
                server.commit()
                acked, _ = clients.wait(PUSH_TIMEOUT)
                cpu.append(cpu_seconds(server.pid) - cpu_before)
                pushes.append(max(acked) - committed_at)
                per_stream.extend(t - committed_at for t in acked)
                time.sleep(0.05)
            result["changes"][kind] = {
                "all_acked_p50_s": _percentile(pushes, 50), "all_acked_p99_s": _percentile(pushes, 99),
                "stream_ack_p99_s": _percentile(per_stream, 99), "cpu_s_per_push": statistics.mean(cpu),
                "client_cpu_s_per_push": (clients.cpu() - client_cpu) / len(pushes), "pushes": pushes,
            }
        result["rss_end_mb"] = rss_mb(server.pid)
        result["rss_mb"] = max(result["rss_synced_mb"], result["rss_end_mb"])
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if clients is not None:
            clients.close()
        pid = server.pid
        server.close()
        wait_gone(pid)
    result["seconds"] = time.monotonic() - started
    return result


def cells(quick: bool) -> list[tuple[str, Scenario]]:
    if quick:
        return [("sotw", Scenario(streams=100, services=10, endpoints_per_service=100, pushes=1))]
    return [(api, Scenario(streams=n, services=s, endpoints_per_service=e, pushes=0))
            for api in APIS for n in STREAMS for s, e in SHAPES]


def run_all(quick: bool, rounds: int, pushes: int, budget: float,
            on_result: Callable[[dict[str, Any]], None], servers: tuple[str, ...] = SERVERS) -> list[dict[str, Any]]:
    """Every cell, every server, `rounds` times, alternating the server order; stops at the budget."""
    results: list[dict[str, Any]] = []
    deadline = time.monotonic() + budget
    for round_ in range(rounds):
        order = servers if round_ % 2 == 0 else tuple(reversed(servers))
        for api, cell in cells(quick):
            scenario = Scenario(streams=cell.streams, services=cell.services,
                                endpoints_per_service=cell.endpoints_per_service,
                                pushes=cell.pushes or pushes)
            for name in order:
                if name == "snapshot" and scenario.streams * scenario.endpoints >= HEAVY_CELL:
                    scenario = replace(scenario, pushes=min(scenario.pushes, HEAVY_PUSHES))
                else:
                    scenario = replace(scenario, pushes=cell.pushes or pushes)
                if time.monotonic() > deadline:
                    log(f"budget of {budget:.0f} s spent: round {round_ + 1} stops here")
                    return results
                load = os.getloadavg()[0]
                result = run_session(name, api, scenario)
                result.update(round=round_ + 1, loadavg_before=round(load, 2))
                log(f"round {round_ + 1} {api} {scenario.streams} streams x {scenario.endpoints} endpoints "
                    f"{name}: {_summary(result)}")
                results.append(result)
                on_result(result)
    return results


def _summary(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"ERROR {result['error']}"
    parts = [f"{kind} p99 {c['all_acked_p99_s'] * 1000:.0f} ms cpu {c['cpu_s_per_push'] * 1000:.0f} ms"
             for kind, c in result["changes"].items()]
    return "; ".join(parts) + f"; rss {result['rss_mb']:.0f} MB"


def build_reference() -> None:
    script = REPO / "scripts" / "bench" / "build-tools.sh"
    subprocess.run([str(script)], check=True, timeout=600)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.xds_compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one cell, one push per change kind (smoke)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds over the grid (default 1)")
    parser.add_argument("--pushes", type=int, default=4, help="pushes per change kind per session (default 4)")
    parser.add_argument("--servers", default=",".join(SERVERS), help=f"comma-separated subset of {SERVERS}")
    parser.add_argument("--budget", type=float, default=660.0, help="seconds; sessions past it are left out")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS})")
    parser.add_argument("--note", default="", help="a note stored with the results (e.g. the commit measured)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.pushes < 1 or args.budget <= 0:
        parser.error("--rounds and --pushes must be at least 1, --budget positive")
    build_reference()
    started = time.monotonic()
    document: dict[str, Any] = {
        "mode": "quick" if args.quick else "full", "note": args.note,
        "cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()], "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                         time.gmtime()),
        "rounds": args.rounds, "pushes_per_kind": args.pushes,
        "method": "one process per server per cell; clients (one process) time the ACK of the first EDS "
                  "response after each commit; CPU = all server threads' schedstat from before the commit "
                  "until every stream ACKed; the agent's commit includes building its resources from the "
                  "model, the reference's staging (decoding the uploaded bytes) is not counted",
        "sessions": [],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)

    def save(result: dict[str, Any]) -> None:
        document["sessions"].append(result)
        document["wall_seconds"] = round(time.monotonic() - started, 1)
        document["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        args.output.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")

    servers = tuple(s for s in args.servers.split(",") if s)
    if not servers or any(s not in SERVERS for s in servers):
        parser.error(f"--servers takes a comma-separated subset of {SERVERS}")
    results = run_all(args.quick, args.rounds, args.pushes, args.budget, save, servers)
    log(f"wrote {args.output} ({len(results)} sessions in {time.monotonic() - started:.0f} s)")
    # A failed session is listed on the page (and here); only a run with nothing measured fails `make bench`.
    for result in results:
        if "error" in result:
            log(f"failed: {result['server']} {result['api']} {result['scenario']} {result['error']}")
    return 0 if any("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
