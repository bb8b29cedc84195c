"""Scripted stand-ins for the network, used only by simulated-time unit tests.

Everything that talks to a real server is tested against the emulator instead.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests
import urllib3

from agent.clock import ManualClock


def make_response(status: int, body: Any = None, headers: dict[str, str] | None = None) -> requests.Response:
    resp = requests.Response()
    resp.status_code = status
    raw = body if isinstance(body, bytes) else json.dumps(body if body is not None else {}).encode()
    resp.raw = urllib3.HTTPResponse(body=io.BytesIO(raw), preload_content=False, status=status)
    resp.headers.update(headers or {})
    return resp


@dataclass
class ScriptedSession:
    """Answers each GET with the next outcome from `script` (cycled), recording the simulated time."""

    clock: ManualClock
    script: list[str]
    endpoints: list[dict[str, Any]] = field(default_factory=lambda: [{"schema": "http", "ip": "10.0.0.1", "port": 80}])
    calls: list[float] = field(default_factory=list)
    on_call: Callable[[str], None] | None = None
    _index: int = 0

    def get(self, url: str, headers: dict[str, str] | None = None, timeout: float = 10, stream: bool = False) \
            -> requests.Response:
        self.calls.append(self.clock.monotonic())
        outcome = self.script[self._index % len(self.script)] if self.script else "ok"
        self._index += 1
        if self.on_call:
            self.on_call(outcome)
        if outcome == "timeout":
            self.clock.advance(timeout)
            raise requests.Timeout("simulated")
        if outcome == "reset":
            raise requests.ConnectionError("simulated reset")
        if outcome == "500":
            return make_response(500, {"error_code": "ModelArts.0001", "error_msg": "internal"})
        if outcome.startswith("429"):
            retry = outcome.partition(":")[2]
            return make_response(429, {"error_code": "APIGW.0308", "error_msg": "throttled"},
                                 {"Retry-After": retry} if retry else None)
        if outcome == "401":
            return make_response(401, {"error_code": "APIGW.0301", "error_msg": "token expired"})
        if outcome == "malformed":
            return make_response(200, b"{not json")
        if url.endswith("predict/endpoints?type=host_endpoints"):
            return make_response(200, {"endpoints": [] if outcome == "empty" else self.endpoints})
        return make_response(200, {"status": "running", "service_id": "x"})


class ReauthAuth:
    """An authenticator that can always re-authenticate (like the IAM password mode)."""

    def __init__(self) -> None:
        self.invalidations = 0

    def headers_for(self, method: str, url: str, body: bytes | None) -> dict[str, str]:
        return {"X-Auth-Token": "simulated"}

    def on_unauthorized(self, response: requests.Response) -> bool:
        self.invalidations += 1
        return True
