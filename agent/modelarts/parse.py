"""Tolerant parsing of the endpoints look-up response.

The public docs show the body only as a picture, so we accept the canonical shape and near
variants; bad entries are dropped with a reason, and only a body with no endpoint list at all
fails as a whole (so last-known-good stays in place).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.errors import DiscoveryError
from agent.model import Endpoint
from agent.validation import IPNetwork, Rejection, validate_entry

_LIST_KEYS = ("endpoints", "host_endpoints", "hostEndpoints")


@dataclass(frozen=True)
class ParsedEndpoints:
    endpoints: tuple[Endpoint, ...]
    rejected: tuple[tuple[Any, Rejection], ...] = field(default_factory=tuple)
    raw_count: int = 0
    service_name: str | None = None


def _find_list(body: dict[str, Any]) -> list[Any] | None:
    for key in _LIST_KEYS:
        value = body.get(key)
        if isinstance(value, list):
            return value
        if isinstance(value, dict):
            nested = _find_list(value)
            if nested is not None:
                return nested
    return None


def _redact_entry(entry: Any) -> Any:
    # Rejected entries are logged; keep them short so a hostile body can't flood the logs.
    text = repr(entry)
    return text if len(text) <= 200 else text[:200] + "…"


def parse_endpoints(body: Any, allowed: Sequence[IPNetwork], max_endpoints: int) -> ParsedEndpoints:
    if not isinstance(body, dict):
        raise DiscoveryError(f"endpoints response is a {type(body).__name__}, not an object", kind="malformed")
    entries = _find_list(body)
    if entries is None:
        raise DiscoveryError("endpoints response has no endpoint list", kind="malformed")
    accepted: list[Endpoint] = []
    rejected: list[tuple[Any, Rejection]] = []
    seen: set[tuple[str, int]] = set()
    for entry in entries:
        result = validate_entry(entry, allowed)
        if isinstance(result, Rejection):
            rejected.append((_redact_entry(entry), result))
            continue
        key = (result.ip, result.port)
        if key in seen:
            rejected.append((_redact_entry(entry), Rejection("duplicate", f"duplicate endpoint {result.address}")))
            continue
        if len(accepted) >= max_endpoints:
            rejected.append(
                (_redact_entry(entry), Rejection("over_cap", f"more than {max_endpoints} endpoints; extra dropped"))
            )
            continue
        seen.add(key)
        accepted.append(result)
    name = body.get("service_name")
    return ParsedEndpoints(
        endpoints=tuple(sorted(accepted)),
        rejected=tuple(rejected),
        raw_count=len(entries),
        service_name=name if isinstance(name, str) else None,
    )
