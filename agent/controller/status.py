"""A ModelArtsService's status and the Events worth emitting, computed from what the controller knows.

Pure functions (no API calls), so the rules are easy to read and to test: conditions Ready,
Synced, Stale and RateLimited follow the store's `SyncStatus`; `lastTransitionTime` only moves
when a condition's status does; messages come from the agent's own error texts, which never
contain credentials.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.model import ServiceSnapshot
from agent.snapshot import SyncStatus

MAX_STATUS_ENDPOINTS = 100

# DiscoveryError.kind -> condition reason.
_REASONS = {
    "throttled": "Throttled",
    "auth": "AuthFailed",
    "not_found": "ServiceNotFound",
    "timeout": "Timeout",
    "connection": "ConnectionFailed",
    "server_error": "ServerError",
    "http_error": "UnexpectedAnswer",
    "malformed": "MalformedResponse",
    "oversized": "MalformedResponse",
    "all_rejected": "AllEndpointsRejected",
    "suspicious_empty": "SuspiciousEmpty",
    "iam_timeout": "IAMUnavailable",
    "iam_unreachable": "IAMUnavailable",
    "iam_error": "IAMUnavailable",
}


@dataclass(frozen=True)
class Problem:
    """Why a ModelArtsService cannot be synced: a CamelCase reason and a one-line message (no secrets)."""

    reason: str
    message: str


@dataclass(frozen=True)
class StatusInput:
    generation: int
    sync: SyncStatus | None = None
    service: ServiceSnapshot | None = None
    problem: Problem | None = None
    effective_interval: float | None = None


@dataclass(frozen=True)
class EventSpec:
    type: str  # Normal | Warning
    reason: str
    message: str


def rfc3339(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def reason_for(kind: str | None) -> str:
    return _REASONS.get(kind or "", "SyncFailed")


def _conditions(previous: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in previous.get("conditions") or [] if isinstance(c, dict) and "type" in c}


def _condition(kind: str, status: str, reason: str, message: str, generation: int,
               previous: Mapping[str, dict[str, Any]], now: str) -> dict[str, Any]:
    old = previous.get(kind) or {}
    since = now if old.get("status") != status else str(old.get("lastTransitionTime") or now)
    return {"type": kind, "status": status, "reason": reason, "message": message[:1000],
            "observedGeneration": generation, "lastTransitionTime": since}


def _kept(previous: Mapping[str, Any]) -> dict[str, Any]:
    """Fields that describe the objects left in place when we cannot poll (so SSA must not drop them)."""
    kept: dict[str, Any] = {"endpointCount": int(previous.get("endpointCount") or 0),
                            "endpoints": list(previous.get("endpoints") or [])}
    for key in ("lastSyncTime", "effectivePollIntervalSeconds"):
        if previous.get(key) is not None:
            kept[key] = previous[key]
    return kept


def build_status(inp: StatusInput, previous: Mapping[str, Any], now: str) -> dict[str, Any] | None:
    """The status to apply, or None to leave the current one alone."""
    prev = _conditions(previous)
    gen = inp.generation

    def cond(kind: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
        return _condition(kind, status, reason, message, gen, prev, now)

    if inp.problem is not None:
        p = inp.problem
        return {"observedGeneration": gen, **_kept(previous), "conditions": [
            cond("Ready", "False", p.reason, p.message), cond("Synced", "False", p.reason, p.message),
            cond("Stale", "Unknown", "NotPolling", "not polled until the problem is fixed"),
            cond("RateLimited", "False", "NotPolling")]}

    sync = inp.sync
    if sync is None or sync.last_attempt is None:
        if prev and previous.get("observedGeneration") == gen:
            return None  # e.g. a new leader before its first look-up: the current status still holds
        status = {"observedGeneration": gen, **_kept(previous), "conditions": [
            cond("Ready", "Unknown", "Pending", "waiting for the first look-up (paced by the rate budget)"),
            cond("Synced", "Unknown", "Pending", "waiting for the first look-up"),
            cond("Stale", "False", "Pending"), cond("RateLimited", "False", "Pending")]}
        if inp.effective_interval is not None:
            status["effectivePollIntervalSeconds"] = round(inp.effective_interval, 2)
        return status

    svc = inp.service
    endpoints = svc.endpoints if svc is not None and svc.synced else ()
    ready = sum(1 for e in endpoints if e.ready)
    ok = sync.last_error is None and sync.last_success is not None
    synced = cond("Synced", "True", "Synced", f"{len(endpoints)} endpoints from ModelArts") if ok else \
        cond("Synced", "False", reason_for(sync.last_error_kind), sync.last_error or "look-up failed")
    if ready:
        ready_cond = cond("Ready", "True", "EndpointsAvailable", f"{ready} of {len(endpoints)} endpoints ready")
    elif svc is not None and svc.synced:
        ready_cond = cond("Ready", "False", "NoEndpoints",
                          f"ModelArts lists no ready instances (service status: {sync.service_status or 'unknown'})")
    else:
        ready_cond = cond("Ready", "False", "NotSynced", sync.last_error or "no successful look-up yet")
    last_sync = rfc3339(sync.last_success) if sync.last_success is not None else previous.get("lastSyncTime")
    stale = cond("Stale", "True", "LastSyncTooOld",
                 f"serving last-known-good endpoints; last successful look-up at {last_sync}") if sync.stale \
        else cond("Stale", "False", "Fresh")
    limited = cond("RateLimited", "True", "Throttled", sync.last_error or "throttled") if sync.rate_limited \
        else cond("RateLimited", "False", "WithinBudget")
    status = {
        "observedGeneration": gen,
        "endpointCount": len(endpoints),
        "endpoints": [{"ip": e.ip, "port": e.port, "schema": e.schema, "ready": e.ready}
                      for e in endpoints[:MAX_STATUS_ENDPOINTS]],
        "conditions": [ready_cond, synced, stale, limited],
    }
    if last_sync:
        status["lastSyncTime"] = last_sync
    if inp.effective_interval is not None:
        status["effectivePollIntervalSeconds"] = round(inp.effective_interval, 2)
    # A look-up that changed nothing else leaves the status as it is: moving lastSyncTime alone was one write
    # per CR per poll (~1,000 a minute at 1,000 CRs). Stale turns True when look-ups stop succeeding.
    if previous.get("lastSyncTime") and {**status, "lastSyncTime": None} == {**previous, "lastSyncTime": None}:
        status["lastSyncTime"] = previous["lastSyncTime"]
    return status


def _addresses(status: Mapping[str, Any]) -> set[str]:
    return {f"{e.get('ip')}:{e.get('port')}" for e in status.get("endpoints") or [] if isinstance(e, dict)}


def _listing(prefix: str, items: list[str], limit: int = 5) -> list[str]:
    shown = [f"{prefix}{a}" for a in items[:limit]]
    if len(items) > limit:
        shown.append(f"{prefix}{len(items) - limit} more")
    return shown


def events_for(previous: Mapping[str, Any], desired: Mapping[str, Any], problem: Problem | None) -> list[EventSpec]:
    """Events for the transitions between two statuses (nothing on a repeat of the same state)."""
    events: list[EventSpec] = []
    before, after = _conditions(previous), _conditions(desired)
    if problem is not None:
        old = before.get("Ready") or {}
        if old.get("status") != "False" or old.get("reason") != problem.reason:
            events.append(EventSpec("Warning", problem.reason, problem.message))
        return events
    old_eps, new_eps = _addresses(previous), _addresses(desired)
    count_before = int(previous.get("endpointCount") or 0)
    count_after = int(desired.get("endpointCount") or 0)
    if old_eps != new_eps or count_before != count_after:
        changes = _listing("+", sorted(new_eps - old_eps)) + _listing("-", sorted(old_eps - new_eps))
        detail = f" ({', '.join(changes)})" if changes else ""
        events.append(EventSpec("Normal", "EndpointsChanged", f"endpoints {count_before} -> {count_after}{detail}"))
    old_sync, new_sync = before.get("Synced") or {}, after.get("Synced") or {}
    if new_sync.get("status") == "False" and (old_sync.get("status") != "False"
                                               or old_sync.get("reason") != new_sync.get("reason")):
        events.append(EventSpec("Warning", "SyncFailed", str(new_sync.get("message") or "look-up failed")))
    if new_sync.get("status") == "True" and old_sync.get("status") == "False":
        events.append(EventSpec("Normal", "SyncRecovered", str(new_sync.get("message") or "look-up works again")))
    return events
