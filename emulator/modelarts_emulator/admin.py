"""Admin HTTP API: drive the emulator from tests and the demo. JSON in, JSON out, own port.

Errors are `{"error": "<message>"}` with 400 (bad body), 404 (unknown id) or 409 (conflict).
An "instance" object is `InstanceInfo` (instances.py) with the key "schema"; a "service" object is
`{"name", "service_id", "project_id", "status", "schema", "port", "instances": [instance...]}`;
a "call" object is `CallRecord` (throttle.py); a "fault" object is the `FaultSpec` fields that
were given plus `fault_id`, `kind`, `armed_at`, `remaining`, `hits`.

    GET    /admin/state                   -> {"clock": {"now", "skew_seconds"}, "urls": {...},
                                              "ca_pem_path", "iam": {"down", "active_tokens",
                                              "token_ttl_seconds"}, "limits": {...}, "faults": [...],
                                              "services": [service...], "users": [user...]}
                                             (users carry names, ids and AKs, never secrets)
    POST   /admin/services                {ServiceConfig} -> 201 service
    DELETE /admin/services/{service_id}   -> {"removed": service_id}
    POST   /admin/services/{service_id}/scale   {"instances": n, "wait": false} -> service
           (scale-in unlists the newest instances at once; they stop after in-flight requests
            finish; "wait": true returns only once they have stopped)
    POST   /admin/services/{service_id}/status  {"status": "running"|...} -> service
    GET    /admin/instances[?service_id=]       -> {"instances": [instance...]}  (current ones)
    GET    /admin/instances/stats[?service_id=] -> {"instances": [instance...]}  (also retired ones)
    POST   /admin/instances/{instance_id}/kill|revive|unhealthy|healthy|remove  {} -> instance
           (remove takes an optional {"wait": bool} like scale)
    POST   /admin/instances/{instance_id}/latency     {"base_ms", "jitter_ms", "distribution", "sigma"} -> instance
    POST   /admin/instances/{instance_id}/error_rate  {"error_rate": x} -> instance
    POST   /admin/instances/{instance_id}/stream      {"tokens", "first_token_ms", "interval_ms",
                                                       "reset_after"} -> instance (StreamConfig)
    POST   /admin/faults                  {FaultSpec} -> 201 fault
           (kinds and parameters: faults.py; `applies_to: "iam"` arms it on the token request,
            `kind: "custom"` programs status, headers and body shape of any answer)
    GET    /admin/faults                  -> {"faults": [fault...]}
    DELETE /admin/faults[?service_id=]    -> {"cleared": n}
    DELETE /admin/faults/{fault_id}       -> {"cleared": n}
    GET    /admin/calls[?since=t][&after=seq][&api=iam|modelarts] -> {"calls": [call...]}
           (since: emulator-clock time, inclusive; after: sequence number, exclusive)
    POST   /admin/reset_calls             -> {"cleared": n}
    POST   /admin/limits                  {any LimitsConfig fields} -> limits; always restarts
                                          the rate windows, so {} just resets the budgets
    POST   /admin/iam/revoke_tokens       -> {"revoked": n}
    POST   /admin/iam/down                {"down": bool} -> {"down": bool}
    POST   /admin/clock                   {"skew_seconds": x} -> {"now", "skew_seconds"}
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelarts_emulator.config import (
    EmulatorConfig,
    LatencyConfig,
    LimitsConfig,
    ServiceConfig,
    ServiceStatus,
    StreamConfig,
    describe_validation_error,
)
from modelarts_emulator.faults import FaultBoard, FaultSpec
from modelarts_emulator.iam import Directory, IamApi, TokenStore
from modelarts_emulator.instances import Fleet, FleetError
from modelarts_emulator.throttle import CallLog, EmulatorClock, RateLimiter

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
M = TypeVar("M", bound=BaseModel)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScaleBody(_Body):
    instances: int = Field(ge=0, le=1000)
    wait: bool = False


class StatusBody(_Body):
    status: ServiceStatus


class WaitBody(_Body):
    wait: bool = False


class ErrorRateBody(_Body):
    error_rate: float = Field(ge=0.0, le=1.0)


class DownBody(_Body):
    down: bool


class ClockBody(_Body):
    skew_seconds: float


class LimitsPatch(_Body):
    per_user_per_minute: int | None = Field(default=None, ge=1)
    per_tenant_per_minute: int | None = Field(default=None, ge=1)
    send_retry_after: bool | None = None
    max_clock_skew_seconds: float | None = Field(default=None, ge=0)
    window_seconds: float | None = Field(default=None, gt=0)


@dataclass
class EmulatorParts:
    """Everything the admin API can reach; built by `Emulator`."""

    config: EmulatorConfig
    clock: EmulatorClock
    calls: CallLog
    directory: Directory
    tokens: TokenStore
    limiter: RateLimiter
    faults: FaultBoard
    fleet: Fleet
    iam: IamApi
    ca_pem_path: str
    urls: dict[str, str] = field(default_factory=dict)


class AdminError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def parse_body(request: web.Request, model: type[M]) -> M:
    raw = await request.read()
    try:
        data = json.loads(raw) if raw.strip() else {}
    except ValueError:
        raise AdminError(400, "body is not valid JSON") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise AdminError(400, describe_validation_error(exc)) from None


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except (AdminError, FleetError) as exc:
        return web.json_response({"error": str(exc)}, status=exc.status)


def _query_float(request: web.Request, name: str) -> float | None:
    value = request.query.get(name)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise AdminError(400, f"{name} must be a number") from None


class AdminApi:
    def __init__(self, parts: EmulatorParts) -> None:
        self.p = parts

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[_errors])
        r = app.router
        r.add_get("/admin/state", self.state)
        r.add_post("/admin/services", self.add_service)
        r.add_delete("/admin/services/{service_id}", self.remove_service)
        r.add_post("/admin/services/{service_id}/scale", self.scale)
        r.add_post("/admin/services/{service_id}/status", self.set_status)
        r.add_get("/admin/instances", self.instances)
        r.add_get("/admin/instances/stats", self.instance_stats)
        r.add_post("/admin/instances/{instance_id}/latency", self.set_latency)
        r.add_post("/admin/instances/{instance_id}/error_rate", self.set_error_rate)
        r.add_post("/admin/instances/{instance_id}/stream", self.set_stream)
        r.add_post("/admin/instances/{instance_id}/{action}", self.instance_action)
        r.add_post("/admin/faults", self.add_fault)
        r.add_get("/admin/faults", self.list_faults)
        r.add_delete("/admin/faults", self.clear_faults)
        r.add_delete("/admin/faults/{fault_id}", self.clear_fault)
        r.add_get("/admin/calls", self.calls)
        r.add_post("/admin/reset_calls", self.reset_calls)
        r.add_post("/admin/limits", self.set_limits)
        r.add_post("/admin/iam/revoke_tokens", self.revoke_tokens)
        r.add_post("/admin/iam/down", self.iam_down)
        r.add_post("/admin/clock", self.set_clock)
        return app

    # --- state --------------------------------------------------------------------------

    async def state(self, request: web.Request) -> web.Response:
        p = self.p
        now = p.clock.now()
        users = [
            {"name": u.name, "domain": u.domain, "domain_id": u.domain_id, "user_id": u.user_id,
             "project_id": u.project_id, "project_name": u.project_name,
             "access_keys": [k.ak for k in u.access_keys]}
            for u in p.directory.users
        ]
        return web.json_response({
            "clock": {"now": now, "skew_seconds": p.clock.skew_seconds},
            "urls": p.urls,
            "ca_pem_path": p.ca_pem_path,
            "iam": {"down": p.iam.down, "active_tokens": len(p.tokens), "token_ttl_seconds": p.tokens.ttl_seconds},
            "limits": p.limiter.limits.model_dump(),
            "faults": p.faults.list(now),
            "services": [s.describe() for s in p.fleet.services.values()],
            "users": users,
        })

    # --- services -----------------------------------------------------------------------

    async def add_service(self, request: web.Request) -> web.Response:
        cfg = await parse_body(request, ServiceConfig)
        projects = {u.project_id for u in self.p.directory.users}
        if cfg.project_id is not None and cfg.project_id not in projects:
            raise AdminError(400, f"project_id {cfg.project_id!r} belongs to no user")
        svc = await self.p.fleet.add_service(cfg)
        return web.json_response(svc.describe(), status=201)

    async def remove_service(self, request: web.Request) -> web.Response:
        service_id = request.match_info["service_id"]
        await self.p.fleet.remove_service(service_id)
        return web.json_response({"removed": service_id})

    async def scale(self, request: web.Request) -> web.Response:
        body = await parse_body(request, ScaleBody)
        svc = await self.p.fleet.scale(request.match_info["service_id"], body.instances, wait=body.wait)
        return web.json_response(svc.describe())

    async def set_status(self, request: web.Request) -> web.Response:
        body = await parse_body(request, StatusBody)
        svc = self.p.fleet.service(request.match_info["service_id"])
        svc.status = body.status
        return web.json_response(svc.describe())

    # --- instances ----------------------------------------------------------------------

    def _instance_list(self, request: web.Request, include_retired: bool) -> web.Response:
        service_id = request.query.get("service_id")
        fleet = self.p.fleet
        if service_id is not None and service_id not in fleet.services and not include_retired:
            raise AdminError(404, f"no service {service_id!r}")
        pool = fleet.all_instances() if include_retired else [i for s in fleet.services.values() for i in s.instances]
        found = [i.info().wire() for i in pool if service_id is None or i.service.service_id == service_id]
        return web.json_response({"instances": found})

    async def instances(self, request: web.Request) -> web.Response:
        return self._instance_list(request, include_retired=False)

    async def instance_stats(self, request: web.Request) -> web.Response:
        return self._instance_list(request, include_retired=True)

    async def instance_action(self, request: web.Request) -> web.Response:
        inst = self.p.fleet.instance(request.match_info["instance_id"])
        action = request.match_info["action"]
        if action == "kill":
            await inst.kill()
        elif action == "revive":
            if inst.state not in ("killed", "running"):
                raise AdminError(409, f"instance {inst.instance_id} is {inst.state}; only killed ones revive")
            try:
                await inst.revive()
            except OSError as exc:
                raise AdminError(409, f"cannot listen on {inst.address}: {exc.strerror}") from None
        elif action in ("unhealthy", "healthy"):
            inst.healthy = action == "healthy"
        elif action == "remove":
            body = await parse_body(request, WaitBody)
            await self.p.fleet.remove_instance(inst.instance_id, wait=body.wait)
        else:
            raise AdminError(404, f"unknown instance action {action!r}")
        return web.json_response(inst.info().wire())

    async def set_latency(self, request: web.Request) -> web.Response:
        inst = self.p.fleet.instance(request.match_info["instance_id"])
        inst.latency = await parse_body(request, LatencyConfig)
        return web.json_response(inst.info().wire())

    async def set_error_rate(self, request: web.Request) -> web.Response:
        inst = self.p.fleet.instance(request.match_info["instance_id"])
        inst.error_rate = (await parse_body(request, ErrorRateBody)).error_rate
        return web.json_response(inst.info().wire())

    async def set_stream(self, request: web.Request) -> web.Response:
        inst = self.p.fleet.instance(request.match_info["instance_id"])
        inst.stream = await parse_body(request, StreamConfig)
        return web.json_response(inst.info().wire())

    # --- faults -------------------------------------------------------------------------

    async def add_fault(self, request: web.Request) -> web.Response:
        spec = await parse_body(request, FaultSpec)
        if spec.service_id is not None and spec.service_id not in self.p.fleet.services:
            raise AdminError(404, f"no service {spec.service_id!r}")
        fault = self.p.faults.arm(spec, self.p.clock.now())
        return web.json_response(fault.describe(), status=201)

    async def list_faults(self, request: web.Request) -> web.Response:
        return web.json_response({"faults": self.p.faults.list(self.p.clock.now())})

    async def clear_faults(self, request: web.Request) -> web.Response:
        return web.json_response({"cleared": self.p.faults.clear(service_id=request.query.get("service_id"))})

    async def clear_fault(self, request: web.Request) -> web.Response:
        try:
            fault_id = int(request.match_info["fault_id"])
        except ValueError:
            raise AdminError(400, "fault_id must be an integer") from None
        return web.json_response({"cleared": self.p.faults.clear(fault_id=fault_id)})

    # --- calls, limits, IAM, clock ------------------------------------------------------

    async def calls(self, request: web.Request) -> web.Response:
        since = _query_float(request, "since")
        after = _query_float(request, "after")
        api = request.query.get("api")
        records = self.p.calls.query(since=since, after=int(after) if after is not None else None)
        return web.json_response(
            {"calls": [r.model_dump(mode="json") for r in records if api is None or r.api == api]}
        )

    async def reset_calls(self, request: web.Request) -> web.Response:
        count = len(self.p.calls.query())
        self.p.calls.clear()
        return web.json_response({"cleared": count})

    async def set_limits(self, request: web.Request) -> web.Response:
        patch = await parse_body(request, LimitsPatch)
        current = self.p.limiter.limits.model_dump()
        current.update(patch.model_dump(exclude_none=True))
        self.p.limiter.configure(LimitsConfig.model_validate(current))
        return web.json_response(self.p.limiter.limits.model_dump())

    async def revoke_tokens(self, request: web.Request) -> web.Response:
        return web.json_response({"revoked": self.p.tokens.revoke_all()})

    async def iam_down(self, request: web.Request) -> web.Response:
        self.p.iam.down = (await parse_body(request, DownBody)).down
        return web.json_response({"down": self.p.iam.down})

    async def set_clock(self, request: web.Request) -> web.Response:
        self.p.clock.skew_seconds = (await parse_body(request, ClockBody)).skew_seconds
        return web.json_response({"now": self.p.clock.now(), "skew_seconds": self.p.clock.skew_seconds})
