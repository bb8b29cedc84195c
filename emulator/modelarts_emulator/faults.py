"""Fault injection for ModelArts and IAM calls: what is armed, which call it hits, and the bad answer.

A fault targets one service (or all) and, by default, only the endpoints look-up; `applies_to`
widens it to the service details, to both, or moves it to IAM's token request (`"iam"`, no
service). It fires for the next `count` matching calls, or for `duration_seconds`, or (neither
given) until cleared. The first armed fault that matches a call wins.

The fixed kinds (5xx, timeout, malformed, ...) are the common cases. `custom` programs the whole
answer, so the emulator can produce any status, header and body shape a client reads:

- `status`: any code 100-599; `headers`: extra or replaced headers, any value (e.g. a
  `Retry-After: soon`, an odd `Content-Type`, a skewed `Date`); `omit_headers`: headers to leave
  out (`Content-Type`, `Date`, IAM's `X-Subject-Token`);
- `body`: `normal` (the real answer, e.g. a token for IAM), `error` (the service's error shape:
  `{error_code, error_msg}` for ModelArts, `{error: {code, message, title}}` for IAM), `text`
  (`text`, not JSON), `json` (`json_body`, any JSON, in or out of the error shape) or `none`;
  `expires_at` replaces IAM's `token.expires_at` (any string);
- on any status: `size_mb` pads the body to a huge one, `interval_seconds` dribbles it
  `chunk_bytes` at a time (slowloris), `chunked` drops Content-Length, and `truncate` announces
  the whole length but ends the connection half-way (`close`: FIN, `reset`: RST).
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
    "5xx", "timeout", "malformed", "wrong_types", "empty", "hostile_ips", "oversized", "reset", "slowloris", "429",
    "custom",
]
Target = Literal["endpoints", "details", "all", "iam"]
BodyShape = Literal["normal", "error", "text", "json", "none"]
WrongTypesVariant = Literal[
    "endpoints_dict", "endpoints_string", "port_list", "port_float", "ip_number", "null_fields", "body_array"
]

# Which optional parameter belongs to which kinds; any other combination is refused.
_CUSTOM = ("custom",)
_PARAM_KIND: dict[str, tuple[str, ...]] = {
    "status": ("5xx", "custom"),
    "seconds": ("timeout",),
    "variant": ("wrong_types",),
    "size_mb": ("oversized", "custom"),
    "interval_seconds": ("slowloris", "custom"),
    "retry_after": ("429",),
    "headers": _CUSTOM,
    "omit_headers": _CUSTOM,
    "body": _CUSTOM,
    "error_code": _CUSTOM,
    "error_msg": _CUSTOM,
    "text": _CUSTOM,
    "json_body": _CUSTOM,
    "expires_at": _CUSTOM,
    "chunk_bytes": _CUSTOM,
    "chunked": _CUSTOM,
    "truncate": _CUSTOM,
}
# Kinds that only make sense on an endpoints/details answer, never on IAM's token request.
_MODELARTS_ONLY = frozenset({"wrong_types", "empty", "hostile_ips"})
_5XX_BODIES = {
    500: ("ModelArts.0010", "Internal server error."),
    502: ("APIGW.0202", "Backend unavailable"),
    503: ("APIGW.0201", "Request error: backend service unavailable"),
    504: ("APIGW.0203", "Backend timeout"),
}


# A custom fault's header edits, handed from the handler to the response-prepare hook.
HeaderEdits = tuple[dict[str, str], list[str]]
FAULT_HEADERS: web.RequestKey[HeaderEdits] = web.RequestKey("fault_headers")


class FaultSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: FaultKind
    service_id: str | None = None  # None: every service
    count: int | None = Field(default=None, ge=1)
    duration_seconds: float | None = Field(default=None, gt=0)
    applies_to: Target = "endpoints"
    status: int | None = Field(default=None, ge=100, le=599)  # 5xx: 500-599 (default 500); custom: 200
    seconds: float = Field(default=30.0, ge=0)  # how long a `timeout` hangs before hanging up
    variant: WrongTypesVariant = "endpoints_dict"
    size_mb: float | None = Field(default=None, gt=0, le=1024)  # oversized: 16 by default
    interval_seconds: float | None = Field(default=None, gt=0)  # slowloris: one byte per interval (1 s)
    # 429: force a Retry-After header, any value (a number, an HTTP date, or garbage like "soon").
    retry_after: int | str | None = None
    # custom (see the module docstring)
    headers: dict[str, str] = Field(default_factory=dict)
    omit_headers: list[str] = Field(default_factory=list)
    body: BodyShape = "normal"
    error_code: str = "ModelArts.0001"
    error_msg: str = "Emulated fault."
    text: str = ""
    json_body: Any = None
    expires_at: str | None = None
    chunk_bytes: int = Field(default=1, ge=1, le=1 << 20)
    chunked: bool = False
    truncate: Literal["close", "reset"] | None = None

    @model_validator(mode="after")
    def _params_match_kind(self) -> FaultSpec:
        for param, kinds in _PARAM_KIND.items():
            if param in self.model_fields_set and self.kind not in kinds:
                raise ValueError(f"parameter {param!r} only applies to {' or '.join(map(repr, kinds))} faults")
        if self.count is not None and self.duration_seconds is not None:
            raise ValueError("give count or duration_seconds, not both")
        if self.kind == "5xx" and self.status is not None and self.status < 500:
            raise ValueError("a 5xx fault needs a status of 500-599 (use kind custom for others)")
        if self.applies_to == "iam":
            if self.service_id is not None:
                raise ValueError("IAM faults apply to the token request, not to a service: drop service_id")
            if self.kind in _MODELARTS_ONLY:
                raise ValueError(f"{self.kind!r} faults change an endpoints answer; IAM has none")
        if self.expires_at is not None and self.applies_to != "iam":
            raise ValueError("expires_at only applies to IAM faults (applies_to: iam)")
        for name, value in [*self.headers.items(), *((n, "") for n in self.omit_headers)]:
            if not name or any(c in name for c in ": \r\n") or any(c in value for c in "\r\n"):
                raise ValueError(f"invalid header {name!r}")  # a header injection would break the framing
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

    def take(self, service_id: str, target: str, now: float, throttle: bool | None) -> ArmedFault | None:
        """The fault for this call, if any; consumes one of its `count`.

        Forced 429s are looked up separately (`throttle=True`) because the gateway refuses those
        before the call reaches the service; `throttle=None` (IAM) takes any kind.
        """
        self._faults = [f for f in self._faults if f.active(now)]
        for fault in self._faults:
            spec = fault.spec
            if spec.service_id not in (None, service_id):
                continue
            if spec.applies_to != target and not (spec.applies_to == "all" and target != "iam"):
                continue
            if throttle is not None and (spec.kind == "429") != throttle:
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
    _end_connection(request, reset)
    return web.Response(status=499)  # never reaches the client; aiohttp needs a return value


def _end_connection(request: web.Request, reset: bool) -> None:
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if reset and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        else:
            transport.close()


async def _stream_bytes(request: web.Request, parts: list[bytes], total: int | None, delay: float,
                        status: int = 200, headers: dict[str, str] | None = None,
                        cut_after: int | None = None, reset: bool = False) -> web.StreamResponse:
    """Send `parts` (`delay` apart); `total=None` is chunked; `cut_after` bytes, then end the connection."""
    resp = web.StreamResponse(status=status, headers=headers or {"Content-Type": "application/json"})
    if total is not None:
        resp.content_length = total
    await resp.prepare(request)
    sent = 0
    for part in parts:
        if delay:
            await asyncio.sleep(delay)
        if cut_after is not None and sent + len(part) >= cut_after:
            await resp.write(part[: cut_after - sent])
            await asyncio.sleep(0.05)  # let the bytes leave before the connection ends
            _end_connection(request, reset)
            return resp
        await resp.write(part)  # raises once the client has gone, ending the handler
        sent += len(part)
    await resp.write_eof()
    return resp


def error_body(shape: Literal["gateway", "iam"], status: int, code: str, message: str) -> dict[str, Any]:
    """The error shape of each service: the API gateway's, or IAM's (Keystone's)."""
    if shape == "iam":
        return {"error": {"code": status, "message": message, "title": code}}
    return {"error_code": code, "error_msg": message}


def _padded(data: bytes, size_mb: float | None, is_json_object: bool) -> bytes:
    """`data` grown to at least `size_mb`: inside a JSON object a "padding" member, else appended bytes."""
    if size_mb is None:
        return data
    size = int(size_mb * 1024 * 1024)
    if is_json_object and data.endswith(b"}"):
        sep = b"," if data.rstrip(b"}").strip(b"{ ") else b""
        return data[:-1] + sep + b'"padding":"' + b"x" * size + b'"}'
    return data + b" " * size


def custom_payload(spec: FaultSpec, normal: Any, shape: Literal["gateway", "iam"], status: int) -> bytes:
    """The body bytes a `custom` fault sends."""
    if spec.body == "none":
        return b""
    if spec.body == "text":
        return _padded(spec.text.encode(), spec.size_mb, False)
    if spec.body == "json":
        value: Any = spec.json_body
    elif spec.body == "error":
        value = error_body(shape, status, spec.error_code, spec.error_msg)
    else:
        value = normal
    if spec.expires_at is not None and isinstance(value, dict) and isinstance(value.get("token"), dict):
        value = {**value, "token": {**value["token"], "expires_at": spec.expires_at}}
    data = json.dumps(value).encode()
    return _padded(data, spec.size_mb, isinstance(value, dict))


def header_edits(spec: FaultSpec) -> tuple[dict[str, str], list[str]]:
    """(headers to set, headers to remove) for a custom fault; applied last, after the server's own."""
    omit = [h.lower() for h in spec.omit_headers]
    if spec.body == "text" and "content-type" not in {h.lower() for h in spec.headers}:
        return {"Content-Type": "text/plain", **spec.headers}, omit
    return dict(spec.headers), omit


async def respond_custom(fault: ArmedFault, request: web.Request, normal: Any, normal_status: int,
                         normal_headers: dict[str, str], shape: Literal["gateway", "iam"]) -> tuple[
                             web.StreamResponse, int]:
    """A fully programmed answer (kind `custom`): status, headers and body shape as armed."""
    spec = fault.spec
    status = spec.status if spec.status is not None else normal_status
    payload = custom_payload(spec, normal, shape, status)
    headers = {"Content-Type": "application/json", **normal_headers}
    set_headers, omit = header_edits(spec)
    # Applied in the response-prepare hook, after aiohttp and the gateway add theirs (Date, Server).
    request[FAULT_HEADERS] = (set_headers, omit)
    step = spec.chunk_bytes if spec.interval_seconds else 256 * 1024
    parts = [payload[i : i + step] for i in range(0, len(payload), step)] or [b""]
    cut = max(1, len(payload) // 2) if spec.truncate and payload else (0 if spec.truncate else None)
    resp = await _stream_bytes(request, parts, None if spec.chunked else len(payload), spec.interval_seconds or 0.0,
                               status, headers, cut, spec.truncate == "reset")
    return resp, 0 if spec.truncate else status


def apply_header_edits(request: web.Request, response: web.StreamResponse) -> None:
    """The response-prepare hook's last step: a custom fault's headers win over the server's own."""
    edits = request.get(FAULT_HEADERS)
    if edits is None:
        return
    set_headers, omit = edits
    for name in omit:
        response.headers.popall(name, None)
    for name, value in set_headers.items():
        response.headers[name] = value


async def respond(fault: ArmedFault, request: web.Request, body: dict[str, Any],
                  shape: Literal["gateway", "iam"] = "gateway", normal_status: int = 200,
                  normal_headers: dict[str, str] | None = None) -> tuple[web.StreamResponse, int]:
    """Answer a call with a fault instead of `body`; returns (response, status to log, 0 if none).

    Forced 429s on ModelArts are answered by the gateway code in modelarts_api, before the call is
    counted; on IAM (`shape="iam"`) they are answered here.
    """
    spec = fault.spec
    kind = spec.kind
    if kind == "custom":
        return await respond_custom(fault, request, body, normal_status, normal_headers or {}, shape)
    if kind == "429":
        headers = {"Retry-After": str(spec.retry_after)} if spec.retry_after is not None else None
        payload = error_body(shape, 429, "APIGW.0308", "The throttling threshold has been reached.")
        return web.json_response(payload, status=429, headers=headers), 429
    if kind == "5xx":
        status = spec.status if spec.status is not None else 500
        code, msg = _5XX_BODIES.get(status, ("ModelArts.0010", "Internal server error."))
        return web.json_response(error_body(shape, status, code, msg), status=status), status
    if kind == "timeout":
        await asyncio.sleep(spec.seconds)
        return _hang_up(request, reset=False), 0
    if kind == "reset":
        return _hang_up(request, reset=True), 0
    if kind == "malformed":
        text = json.dumps(body)[: max(1, len(json.dumps(body)) // 2)]
        return web.Response(text=text, content_type="application/json", status=normal_status,
                            headers=normal_headers), normal_status
    if kind == "empty":
        return web.json_response({**body, "endpoints": []}), 200
    if kind == "wrong_types":
        return web.json_response(wrong_types_body(spec.variant, body)), 200
    if kind == "hostile_ips":
        endpoints = body.get("endpoints") or []
        return web.json_response({**body, "endpoints": hostile_endpoints(endpoints[0] if endpoints else None)}), 200
    headers = {"Content-Type": "application/json", **(normal_headers or {})}
    if kind == "oversized":
        head = json.dumps({**body, "padding": ""})[:-2].encode()  # up to the padding's opening quote
        size = int((spec.size_mb or 16.0) * 1024 * 1024)
        chunk = 256 * 1024
        parts = [head] + [b"x" * min(chunk, size - off) for off in range(0, size, chunk)] + [b'"}']
        total = sum(len(p) for p in parts)
        return await _stream_bytes(request, parts, total, 0.0, normal_status, headers), normal_status
    # slowloris: a valid body, one byte per interval
    data = json.dumps(body).encode()
    parts = [data[i : i + 1] for i in range(len(data))]
    return await _stream_bytes(request, parts, len(data), spec.interval_seconds or 1.0, normal_status,
                               headers), normal_status
