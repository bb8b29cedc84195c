"""`modelarts-agent status`: what a running agent knows, read from its admin endpoint."""

from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING, Any

from agent.errors import AgentError

if TYPE_CHECKING:  # imported where used: every other command would pay for rich
    from rich.console import Group
    from rich.table import Table


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("status", help="show a running agent's services, endpoints, sync state and budget")
    parser.add_argument("--admin", default="http://127.0.0.1:8086", help="the agent's admin URL")
    parser.add_argument("--json", action="store_true", help="print the raw status JSON")
    parser.add_argument("--watch", action="store_true", help="refresh every --interval seconds")
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--count", type=int, default=0, help="with --watch: stop after N refreshes (0: until Ctrl-C)")
    parser.set_defaults(handler=run)


def fetch(admin: str) -> dict[str, Any]:
    import requests

    url = admin.rstrip("/") + "/status"
    try:
        resp = requests.get(url, timeout=5)
    except requests.RequestException as exc:
        raise AgentError(f"cannot reach the agent at {url}: {type(exc).__name__}") from None
    if resp.status_code != 200:
        raise AgentError(f"{url} answered HTTP {resp.status_code}")
    try:
        data: dict[str, Any] = resp.json()
    except ValueError:
        raise AgentError(f"{url} did not answer JSON") from None
    return data


def _age(now: float, then: float | None) -> str:
    if then is None:
        return "never"
    seconds = max(0.0, now - then)
    return f"{seconds:.0f}s ago" if seconds < 120 else f"{seconds / 60:.0f}m ago"


def _state(service: dict[str, Any]) -> str:
    if not service.get("synced"):
        return "[yellow]not synced"
    if service.get("rate_limited"):
        return "[red]rate-limited"
    if service.get("stale"):
        return "[red]stale"
    if service.get("last_error"):
        return "[yellow]degraded"
    if not service.get("endpoint_count"):
        return "[red]no endpoints"  # drained: the reason is in the last column
    return "[green]fresh"


def _every(service: dict[str, Any]) -> str:
    if "effective_poll_interval_seconds" not in service:
        return "?s"
    interval = service["effective_poll_interval_seconds"]
    return "-" if interval is None else f"{interval}s"  # None: watched (a sidecar), not polled


def render(status: dict[str, Any]) -> Group:
    from rich.console import Group
    from rich.table import Table

    now = float(status.get("clock") or time.time())
    services = Table(title=f"services (snapshot v{status.get('snapshot_version')}, "
                           f"{'ready' if status.get('ready') else 'NOT ready'})")
    for column in ("service", "service id", "endpoints", "state", "last sync", "poll every", "last error"):
        services.add_column(column)
    for svc in status.get("services", []):
        services.add_row(
            svc["name"], svc["service_id"], str(svc.get("endpoint_count", 0)), _state(svc),
            _age(now, svc.get("last_success")), _every(svc),
            (svc.get("last_error") or svc.get("no_endpoints_reason") or "")[:100],
        )
    budgets = Table(title="ModelArts rate budget")
    for column in ("identity", "calls in window", "limit", "waited", "total calls", "next slot"):
        budgets.add_column(column)
    for budget in status.get("budgets", []):
        budgets.add_row(budget["identity"], str(budget["used_in_window"]), str(budget["limit"]),
                        str(budget["waits_total"]), str(budget["calls_total"]), f"{budget['next_slot_seconds']:.1f}s")
    weights = _weights_table(status)
    return Group(services, budgets, *([weights] if weights is not None else []))


def _weights_table(status: dict[str, Any]) -> Table | None:
    """Adaptive load balancing (lb.adaptive): each endpoint's weight and the estimate behind it."""
    from rich.table import Table

    rows = [(svc["name"], row) for svc in status.get("services", []) for row in svc.get("weights") or []]
    if not rows:
        return None
    table = Table(title="adaptive weights")
    for column in ("service", "endpoint", "weight", "weight %", "latency", "req/s", "in flight"):
        # Addresses in full: a truncated "10.0.0.1…" would hide which instance is which.
        table.add_column(column, no_wrap=column == "endpoint", min_width=21 if column == "endpoint" else None)
    totals: dict[str, float] = {}
    for name, row in rows:
        totals[name] = totals.get(name, 0.0) + float(row.get("weight") or 0)
    for name, row in rows:
        weight = float(row.get("weight") or 0)
        latency = row.get("latency_ms")
        table.add_row(name, str(row.get("address", "?")), f"{weight:.0f}",
                      f"{weight / totals[name]:.1%}" if totals[name] else "-",
                      "-" if latency is None else f"{float(latency):.1f} ms",
                      f"{float(row.get('rate') or 0):.1f}", f"{float(row.get('in_flight') or 0):.2f}")
    return table


def run(args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps(fetch(args.admin), indent=2))
        return 0
    from rich.console import Console
    from rich.live import Live

    console = Console()
    if not args.watch:
        console.print(render(fetch(args.admin)))
        return 0
    shown = 0
    with Live(render(fetch(args.admin)), console=console, refresh_per_second=2) as live:
        while args.count <= 0 or shown < args.count:
            time.sleep(args.interval)
            live.update(render(fetch(args.admin)))
            shown += 1
    return 0
