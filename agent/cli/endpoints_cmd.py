"""`modelarts-agent endpoints`: a one-shot look-up, printed as a table or JSON."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from agent.cli.options import add_config_flags, config_from_args
from agent.errors import AgentError, ConfigError, DiscoveryError
from agent.modelarts.budget import BudgetRegistry
from agent.modelarts.client import allowed_networks, build_client


@dataclass
class LookupResult:
    name: str
    service_id: str
    endpoints: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, str]] = field(default_factory=list)
    status: str | None = None
    error: str | None = None


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("endpoints", help="look up the instances of ModelArts services once")
    add_config_flags(parser)
    parser.add_argument("--service", action="append", default=[], help="only this configured service (repeatable)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(handler=run)


def lookup(args: argparse.Namespace) -> list[LookupResult]:
    config = config_from_args(args)
    specs = [s for s in config.services if not args.service or s.name in args.service]
    unknown = set(args.service) - {s.name for s in config.services}
    if unknown:
        raise ConfigError(f"no configured service named {', '.join(sorted(unknown))}")
    budgets = BudgetRegistry(config.budget.per_user_per_minute, config.budget.per_tenant_per_minute,
                             config.budget.safety_margin_seconds, warm_start=False)
    client = build_client(config, budgets)
    allowed = allowed_networks(config)
    results: list[LookupResult] = []
    for spec in specs:
        result = LookupResult(name=spec.name, service_id=spec.service_id)
        try:
            parsed = client.get_endpoints(spec.service_id, allowed, config.discovery.max_endpoints, spec.project_id)
            result.endpoints = [{"ip": e.ip, "port": e.port, "schema": e.schema} for e in parsed.endpoints]
            result.rejected = [{"entry": str(entry), "reason": r.reason, "detail": r.detail}
                               for entry, r in parsed.rejected]
            if not parsed.endpoints:
                result.status = client.get_service(spec.service_id, spec.project_id).status
        except DiscoveryError as exc:
            result.error = str(exc)
        results.append(result)
    return results


def run(args: argparse.Namespace) -> int:
    results = lookup(args)
    if args.json:
        print(json.dumps([r.__dict__ for r in results], indent=2))
    else:
        console = Console()
        table = Table(title="ModelArts endpoints")
        for column in ("service", "service id", "schema", "address", "note"):
            table.add_column(column)
        for r in results:
            for e in r.endpoints:
                table.add_row(r.name, r.service_id, e["schema"], f"{e['ip']}:{e['port']}", "")
            for rej in r.rejected:
                table.add_row(r.name, r.service_id, "", rej["entry"][:40], f"[yellow]dropped: {rej['detail']}")
            if r.error:
                table.add_row(r.name, r.service_id, "", "", f"[red]{r.error}")
            elif not r.endpoints:
                table.add_row(r.name, r.service_id, "", "", f"no endpoints (service {r.status})")
        console.print(table)
    failed = [r for r in results if r.error]
    if failed and len(failed) == len(results):
        raise AgentError(f"look-up failed for every service ({failed[0].error})")
    return 1 if failed else 0
