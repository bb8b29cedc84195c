"""`modelarts-agent endpoints`: a one-shot look-up, printed as a table or JSON.

The look-up API allows 20 calls a minute per IAM user, for every process together. So when an
agent is already running with this config (its admin /status answers on the configured admin
address and port), its view is printed and ModelArts is not called; `--fresh`, or a service the
agent does not know, calls the API, through the same host-wide budget and token cache as `run`.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from agent.cli.options import add_config_flags, config_from_args
from agent.config import AgentConfig
from agent.errors import AgentError, ConfigError, DiscoveryError

log = logging.getLogger(__name__)


@dataclass
class LookupResult:
    name: str
    service_id: str
    endpoints: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, str]] = field(default_factory=list)
    status: str | None = None
    error: str | None = None
    source: str = "api"  # "agent": read from the running agent's /status, ModelArts not called


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("endpoints", help="look up the instances of ModelArts services once")
    add_config_flags(parser)
    parser.add_argument("--service", action="append", default=[], help="only this configured service (repeatable)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--fresh", action="store_true",
                        help="call ModelArts even if a running agent already knows the answer (still budgeted)")
    parser.set_defaults(handler=run)


def agent_view(config: AgentConfig) -> dict[str, dict[str, Any]]:
    """service_id -> the running agent's synced status entry, read from its admin /status ({} if none)."""
    import requests

    port = config.admin.port
    if not port:
        return {}
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(config.admin.address, config.admin.address)
    url = f"http://[{host}]:{port}/status" if ":" in host else f"http://{host}:{port}/status"
    session = requests.Session()
    session.trust_env = False  # a loopback call: never through a proxy
    try:
        resp = session.get(url, timeout=2)
        data = resp.json() if resp.status_code == 200 else None
    except (requests.RequestException, ValueError):
        return {}
    finally:
        session.close()
    if not isinstance(data, dict) or not isinstance(data.get("services"), list):
        return {}
    target = data.get("modelarts")
    wanted = {"modelarts_url": config.modelarts.modelarts_url, "project_id": config.modelarts.project_id}
    if not isinstance(target, dict) or {k: target.get(k) for k in wanted} != wanted:
        return {}  # an agent for another ModelArts endpoint or project: its view is not ours
    view: dict[str, dict[str, Any]] = {}
    for entry in data["services"]:
        if isinstance(entry, dict) and entry.get("synced") and isinstance(entry.get("endpoint_details"), list):
            view[str(entry.get("service_id"))] = entry
    if view:
        log.info("using the running agent's view instead of calling ModelArts (--fresh to call)",
                 extra={"admin": url, "services": len(view)})
    return view


def _from_agent(name: str, service_id: str, entry: dict[str, Any]) -> LookupResult:
    endpoints = [{"ip": e.get("ip"), "port": e.get("port"), "schema": e.get("schema")}
                 for e in entry["endpoint_details"] if isinstance(e, dict)]
    return LookupResult(name=name, service_id=service_id, endpoints=endpoints, source="agent",
                        status=entry.get("service_status") if not endpoints else None,
                        error=entry.get("last_error") if entry.get("stale") else None)


def lookup(args: argparse.Namespace) -> list[LookupResult]:
    # The ModelArts client (requests, the signer, host state) is imported here, not for every command.
    from agent.modelarts.budget import BudgetRegistry
    from agent.modelarts.client import allowed_networks, build_client
    from agent.modelarts.credentials import check_sources, credentials_from_config
    from agent.modelarts.host_state import host_state_for

    config = config_from_args(args)
    specs = [s for s in config.services if not args.service or s.name in args.service]
    unknown = set(args.service) - {s.name for s in config.services}
    if unknown:
        raise ConfigError(f"no configured service named {', '.join(sorted(unknown))}")
    view = {} if getattr(args, "fresh", False) else agent_view(config)
    known = {s.name: _from_agent(s.name, s.service_id, view[s.service_id]) for s in specs if s.service_id in view}
    if len(known) == len(specs):
        return [known[s.name] for s in specs]
    check_sources(credentials_from_config(config.auth))
    # Cold start (no pacing wait of its own), but the host-wide budget holds every other process's calls.
    shared, tokens = host_state_for(config)
    budgets = BudgetRegistry(config.budget.per_user_per_minute, config.budget.per_tenant_per_minute,
                             config.budget.safety_margin_seconds, warm_start=False, shared=shared)
    client = build_client(config, budgets, token_cache=tokens)
    allowed = allowed_networks(config)
    results: list[LookupResult] = []
    for spec in specs:
        if spec.name in known:
            results.append(known[spec.name])
            continue
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
    from rich.console import Console
    from rich.table import Table

    results = lookup(args)
    if args.json:
        print(json.dumps([r.__dict__ for r in results], indent=2))
    else:
        console = Console()
        from_agent = any(r.source == "agent" for r in results)
        table = Table(title="ModelArts endpoints" + (" (from the running agent; --fresh to call ModelArts)"
                                                     if from_agent else ""))
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
