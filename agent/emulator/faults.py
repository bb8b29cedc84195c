"""Fault injection for ModelArts API calls: what is armed, which call it hits, and the bad answer.

A fault targets one service (or all) and, by default, only the endpoints look-up. It fires for
the next `count` matching calls, or for `duration_seconds`, or (neither given) until cleared.
The first armed fault that matches a call wins.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import struct
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, model_validator

FaultKind = Literal[
    "5xx", "timeout", "malformed", "wrong_types", "empty", "hostile_ips", "oversized", "reset", "slowloris", "429"
]
WrongTypesVariant = Literal[
    "endpoints_dict", "endpoints_string", "port_list", "port_float", "ip_number", "null_fields", "body_array"
]

# Which optional parameter belongs to which kind; any other combination is refused.
_PARAM_KIND = {
    "status": "5xx",
    "seconds": "timeout",
    "variant": "wrong_types",
    "size_mb": "oversized",
    "interval_seconds": "slowloris",
    "retry_after": "429",
}
_5XX_BODIES = {
    500: ("ModelArts.0010", "Internal server error."),
    502: ("APIGW.0202", "Backend unavailable"),
    503: ("APIGW.0201", "Request error: backend service unavailable"),
    504: ("APIGW.0203", "Backend timeout"),
}


class FaultSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: FaultKind
    service_id: str | None = None  # None: every service
    count: int | None = Field(default=None, ge=1)
    duration_seconds: float | None = Field(default=None, gt=0)
    applies_to: Literal["endpoints", "details", "all"] = "endpoints"
    status: Literal[500, 502, 503, 504] = 500
    seconds: float = Field(default=30.0, ge=0)  # how long a `timeout` hangs before hanging up
    variant: WrongTypesVariant = "endpoints_dict"
    size_mb: float = Field(default=16.0, gt=0, le=1024)
    interval_seconds: float = Field(default=1.0, gt=0)  # slowloris: one byte per interval
    retry_after: int | None = Field(default=None, ge=0)  # 429: force a Retry-After header

    @model_validator(mode="after")
    def _params_match_kind(self) -> FaultSpec:
        for param, kind in _PARAM_KIND.items():
            if param in self.model_fields_set and self.kind != kind:
                raise ValueError(f"parameter {param!r} only applies to {kind!r} faults")
        if self.count is not None and self.duration_seconds is not None:
            raise ValueError("give count or duration_seconds, not both")
        return self


@dataclass
class ArmedFault:
    fault_id: int
    spec: FaultSpec
    armed_at: float
    remaining: int | None
    hits: int = 0

    def active(self, now: float) -> bool:
        if self.remaining is not None and self.remaining <= 0:
            return False
        return self.spec.duration_seconds is None or now < self.armed_at + self.spec.duration_seconds

    def describe(self) -> dict[str, Any]:
        return {
            "fault_id": self.fault_id,
            **self.spec.model_dump(exclude_unset=True),
            "kind": self.spec.kind,
            "armed_at": self.armed_at,
            "remaining": self.remaining,
            "hits": self.hits,
        }


class FaultBoard:
    def __init__(self) -> None:
        self._faults: list[ArmedFault] = []
        self._ids = itertools.count(1)

    def arm(self, spec: FaultSpec, now: float) -> ArmedFault:
        fault = ArmedFault(next(self._ids), spec, now, spec.count)
        self._faults.append(fault)
        return fault

    def take(self, service_id: str, target: str, now: float, throttle: bool) -> ArmedFault | None:
        """The fault for this call, if any; consumes one of its `count`.

        Forced 429s are looked up separately (`throttle=True`) because the gateway refuses those
        before the call reaches the service.
        """
        self._faults = [f for f in self._faults if f.active(now)]
        for fault in self._faults:
            spec = fault.spec
            if spec.service_id not in (None, service_id) or spec.applies_to not in ("all", target):
                continue
            if (spec.kind == "429") != throttle:
                continue
            fault.hits += 1
            if fault.remaining is not None:
                fault.remaining -= 1
            return fault
        return None

    def clear(self, service_id: str | None = None, fault_id: int | None = None) -> int:
        before = len(self._faults)
        self._faults = [
            f for f in self._faults
            if not ((service_id is None or f.spec.service_id == service_id) and fault_id in (None, f.fault_id))
        ]
        return before - len(self._faults)

    def list(self, now: float) -> list[dict[str, Any]]:
        return [f.describe() for f in self._faults if f.active(now)]


def hostile_endpoints(valid: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Entries a careful client must drop, plus (if there is one) a real entry and its duplicate."""
    port = valid["port"] if valid else 8080
    ip = valid["ip"] if valid else "192.0.2.1"
    bad_ips = [
        "127.0.0.1", "169.254.169.254", "224.0.0.1", "0.0.0.0", "::ffff:127.0.0.1", "::1", "fe80::1",
        "8.8.8.8", "255.255.255.255", "not-an-ip", "",
    ]
    entries: list[dict[str, Any]] = [{"schema": "http", "ip": bad, "port": port} for bad in bad_ips]
    entries += [
        {"schema": "http", "ip": ip, "port": 0},
        {"schema": "http", "ip": ip, "port": 65536},
        {"schema": "http", "ip": ip, "port": -1},
        {"schema": "http", "ip": ip, "port": "abc"},
        {"schema": "ftp", "ip": ip, "port": port},
    ]
    if valid:
        entries += [dict(valid), dict(valid)]
    return entries


def wrong_types_body(variant: str, body: dict[str, Any]) -> Any:
    endpoints = body.get("endpoints") or []
    first = endpoints[0] if endpoints else {"schema": "http", "ip": "192.0.2.1", "port": 8080}
    if variant == "body_array":
        return endpoints
    if variant == "endpoints_dict":
        return {**body, "endpoints": first}
    if variant == "endpoints_string":
        return {**body, "endpoints": f"{first['ip']}:{first['port']}"}
    if variant == "port_list":
        return {**body, "endpoints": [{**e, "port": [e["port"]]} for e in endpoints]}
    if variant == "port_float":
        return {**body, "endpoints": [{**e, "port": e["port"] + 0.5} for e in endpoints]}
    if variant == "ip_number":
        return {**body, "endpoints": [{**e, "ip": 2130706442} for e in endpoints]}
    return {**body, "endpoints": [{"schema": None, "ip": None, "port": None} for _ in endpoints or [0]]}


def _hang_up(request: web.Request, reset: bool) -> web.Response:
    """Drop the connection with no response: a TCP RST if `reset`, else a plain FIN."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if reset and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        else:
            transport.close()
    return web.Response(status=499)  # never reaches the client; aiohttp needs a return value


async def _stream_bytes(request: web.Request, parts: list[bytes], total: int, delay: float) -> web.StreamResponse:
    resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    resp.content_length = total
    await resp.prepare(request)
    for part in parts:
        if delay:
            await asyncio.sleep(delay)
        await resp.write(part)  # raises once the client has gone, ending the handler
    await resp.write_eof()
    return resp


async def respond(fault: ArmedFault, request: web.Request, body: dict[str, Any]) -> tuple[web.StreamResponse, int]:
    """Answer a call with a (non-429) fault instead of `body`; returns (response, status to log, 0 if none).

    Forced 429s are answered by the gateway code in modelarts_api, before the call is counted.
    """
    spec = fault.spec
    kind = spec.kind
    if kind == "5xx":
        code, msg = _5XX_BODIES[spec.status]
        return web.json_response({"error_code": code, "error_msg": msg}, status=spec.status), spec.status
    if kind == "timeout":
        await asyncio.sleep(spec.seconds)
        return _hang_up(request, reset=False), 0
    if kind == "reset":
        return _hang_up(request, reset=True), 0
    if kind == "malformed":
        text = json.dumps(body)[: max(1, len(json.dumps(body)) // 2)]
        return web.Response(text=text, content_type="application/json"), 200
    if kind == "empty":
        return web.json_response({**body, "endpoints": []}), 200
    if kind == "wrong_types":
        return web.json_response(wrong_types_body(spec.variant, body)), 200
    if kind == "hostile_ips":
        endpoints = body.get("endpoints") or []
        return web.json_response({**body, "endpoints": hostile_endpoints(endpoints[0] if endpoints else None)}), 200
    if kind == "oversized":
        head = json.dumps({**body, "padding": ""})[:-2].encode()  # up to the padding's opening quote
        size = int(spec.size_mb * 1024 * 1024)
        chunk = 256 * 1024
        parts = [head] + [b"x" * min(chunk, size - off) for off in range(0, size, chunk)] + [b'"}']
        return await _stream_bytes(request, parts, sum(len(p) for p in parts), 0.0), 200
    # slowloris: a valid body, one byte per interval
    data = json.dumps(body).encode()
    parts = [data[i : i + 1] for i in range(len(data))]
    return await _stream_bytes(request, parts, len(data), spec.interval_seconds), 200
