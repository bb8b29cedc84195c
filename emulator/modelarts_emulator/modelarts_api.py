"""ModelArts API stand-in (`/v1/{project_id}/services...`), behind an API-gateway-like front.

Every call goes: route -> authenticate (X-Auth-Token, or an AK/SK signature) -> forced-429
fault -> rate limits (per IAM user, then per tenant; only admitted calls count) -> project
check -> parameter check -> service look-up -> other armed faults -> the answer. Every call, refused or not, lands
in the call log.

Error bodies are `{"error_code": ..., "error_msg": ...}`:

- 401 APIGW.0301 "Incorrect IAM authentication information: <reason>", where reason is e.g.
  "x-auth-token not found", "token expired", "token is invalid or revoked",
  "verify aksk signature fail", "the request date is too far from the server time", "ak not found";
- 403 ModelArts.0203 when the token's project (or the AK owner's domain) does not match the URL;
- 404 ModelArts.3502 for an unknown service, 404 APIGW.0101 for an unknown API;
- 400 ModelArts.0101 for a bad `type` query on the endpoints look-up;
- 429 APIGW.0308 "The throttling threshold has been reached: policy user over ratelimit,
  limit:20, time:1 minute" (or "policy domain ..." for the tenant limit); Retry-After only
  when `limits.send_retry_after` is on.
"""

from __future__ import annotations

import email.utils
import secrets
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

from modelarts_emulator.config import LimitsConfig, UserConfig
from modelarts_emulator.faults import FaultBoard, apply_header_edits, respond
from modelarts_emulator.iam import Directory, TokenError, TokenStore
from modelarts_emulator.instances import Fleet, ServiceRuntime
from modelarts_emulator.signature import IncomingRequest, SignatureError, verify
from modelarts_emulator.throttle import CallLog, EmulatorClock, RateLimiter, Throttled

Target = Literal["endpoints", "details", "list"]
AUTH_PREFIX = "Incorrect IAM authentication information: "


def api_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error_code": code, "error_msg": message}, status=status, headers=headers)


@dataclass(frozen=True)
class Identity:
    user: UserConfig
    auth: Literal["token", "aksk"]
    token_project: str | None  # project the token was scoped to; None for AK/SK


class _Refused(Exception):
    """Ends a call with an error body; carries the code for the call log."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.response = api_error(status, code, message, headers)


class ModelArtsApi:
    def __init__(
        self, directory: Directory, tokens: TokenStore, clock: EmulatorClock, calls: CallLog,
        limiter: RateLimiter, faults: FaultBoard, fleet: Fleet,
    ) -> None:
        self.directory = directory
        self.tokens = tokens
        self.clock = clock
        self.calls = calls
        self.limiter = limiter
        self.faults = faults
        self.fleet = fleet

    @property
    def limits(self) -> LimitsConfig:
        return self.limiter.limits

    def add_routes(self, app: web.Application) -> None:
        """The ModelArts routes, then a catch-all 404 (so add any other routes first)."""
        app.router.add_get("/v1/{project_id}/services", self.list_services)
        app.router.add_get("/v1/{project_id}/services/{service_id}", self.service_details)
        app.router.add_get("/v1/{project_id}/services/{service_id}/predict/endpoints", self.endpoints)
        app.router.add_route("*", "/{tail:.*}", self.unknown_api)
        app.on_response_prepare.append(self._date_header)

    async def _date_header(self, request: web.Request, response: web.StreamResponse) -> None:
        # A real gateway stamps its own clock; clients use it to detect and correct AK/SK date skew.
        response.headers["Date"] = email.utils.formatdate(self.clock.now(), usegmt=True)
        apply_header_edits(request, response)  # a custom fault's headers (or their absence) win

    def make_app(self) -> web.Application:
        app = web.Application()
        self.add_routes(app)
        return app

    # --- gateway front ------------------------------------------------------------------

    async def _authenticate(self, request: web.Request) -> Identity:
        token = request.headers.get("X-Auth-Token")
        if token is not None:
            try:
                issued = self.tokens.validate(token)
            except TokenError as exc:
                raise _Refused(401, "APIGW.0301", AUTH_PREFIX + str(exc)) from None
            return Identity(issued.user, "token", issued.project_id)
        if "Authorization" not in request.headers:
            raise _Refused(401, "APIGW.0301", AUTH_PREFIX + "x-auth-token not found")
        incoming = IncomingRequest(
            method=request.method,
            scheme=request.scheme,
            path=request.rel_url.raw_path,
            query_string=request.rel_url.raw_query_string,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=await request.read(),
        )
        try:
            ak = verify(incoming, self.directory.secret_for, self.clock.now(), self.limits.max_clock_skew_seconds)
        except SignatureError as exc:
            raise _Refused(401, "APIGW.0301", AUTH_PREFIX + exc.reason) from None
        owner = self.directory.owner_of(ak)
        assert owner is not None  # verify() found its secret
        return Identity(owner, "aksk", None)

    def _throttle_refusal(self, throttled: Throttled, forced_retry_after: int | str | None = None) -> _Refused:
        headers = {}
        if forced_retry_after is not None:
            headers["Retry-After"] = str(forced_retry_after)
        elif self.limits.send_retry_after:
            headers["Retry-After"] = throttled.retry_after_header
        return _Refused(429, "APIGW.0308", throttled.message, headers)

    def _synthetic_throttle(self) -> Throttled:
        window = self.limits.window_seconds
        return Throttled("user", self.limits.per_user_per_minute, window, window)

    def _check_project(self, identity: Identity, request: web.Request, project_id: str) -> None:
        user = identity.user
        if identity.token_project is not None:
            if identity.token_project != project_id:
                raise _Refused(
                    403, "ModelArts.0203", f"Invalid token: it is scoped to another project than {project_id}."
                )
            return
        header_project = request.headers.get("X-Project-Id")
        if header_project is not None and header_project != project_id:
            raise _Refused(403, "ModelArts.0203", "X-Project-Id does not match the project in the URL.")
        if project_id not in self.directory.domain_projects(user.domain):
            raise _Refused(403, "ModelArts.0203", f"The project {project_id} is not in the AK owner's account.")

    def _find_service(self, project_id: str, service_id: str) -> ServiceRuntime:
        svc = self.fleet.services.get(service_id)
        if svc is None or svc.config.project_id != project_id:
            raise _Refused(404, "ModelArts.3502", f"Service {service_id} does not exist.")
        return svc

    async def _gateway(self, request: web.Request, target: Target) -> web.StreamResponse:
        started = self.clock.now()
        fields: dict[str, Any] = {
            "api": "modelarts", "method": request.method, "path": request.path,
            "query": request.query_string, "service_id": request.match_info.get("service_id"),
        }
        if "X-Auth-Token" in request.headers:
            fields["auth"] = "token"
        elif "Authorization" in request.headers:
            fields["auth"] = "aksk"
        status = 0  # stays 0 if no complete response goes out (hang-up, reset, client gone)
        try:
            response, status = await self._dispatch(request, target, fields)
            return response
        except _Refused as refused:
            status = refused.status
            fields["error_code"] = refused.code
            return refused.response
        finally:
            # In `finally` so a call whose handler is cancelled (the client left a hanging
            # fault) is still logged.
            self.calls.add(time=started, status=status, **fields)

    async def _dispatch(
        self, request: web.Request, target: Target, fields: dict[str, Any]
    ) -> tuple[web.StreamResponse, int]:
        project_id = request.match_info["project_id"]
        service_id = request.match_info.get("service_id", "")
        identity = await self._authenticate(request)
        fields.update(user=identity.user.name, domain=identity.user.domain, auth=identity.auth)
        now = self.clock.now()
        if target != "list" and (forced := self.faults.take(service_id, target, now, throttle=True)):
            fields["fault"] = "429"  # forced throttling: refused before counting, like the real one
            raise self._throttle_refusal(self._synthetic_throttle(), forced.spec.retry_after)
        throttled = self.limiter.admit(identity.user.user_id, identity.user.domain_id, now)
        if throttled is not None:
            raise self._throttle_refusal(throttled)
        fields["counted"] = True
        self._check_project(identity, request, project_id)
        if target == "list":
            return self._list_body(request, project_id), 200
        if target == "endpoints" and request.query.get("type") != "host_endpoints":
            raise _Refused(400, "ModelArts.0101", "Invalid parameter: type must be host_endpoints.")
        svc = self._find_service(project_id, service_id)
        body = self._endpoints_body(svc) if target == "endpoints" else self._details_body(svc)
        fault = self.faults.take(service_id, target, now, throttle=False)
        headers = {"X-Request-Id": secrets.token_hex(16)}
        if fault is not None:
            fields["fault"] = fault.spec.kind
            return await respond(fault, request, body, normal_headers=headers)
        return web.json_response(body, headers=headers), 200

    # --- routes ---------------------------------------------------------------------------

    async def endpoints(self, request: web.Request) -> web.StreamResponse:
        return await self._gateway(request, "endpoints")

    async def service_details(self, request: web.Request) -> web.StreamResponse:
        return await self._gateway(request, "details")

    async def list_services(self, request: web.Request) -> web.StreamResponse:
        return await self._gateway(request, "list")

    async def unknown_api(self, request: web.Request) -> web.StreamResponse:
        self.calls.add(time=self.clock.now(), api="modelarts", method=request.method, path=request.path,
                       query=request.query_string, status=404, error_code="APIGW.0101")
        return api_error(404, "APIGW.0101", "The API does not exist or has not been published in the environment.")

    # --- bodies ---------------------------------------------------------------------------

    @staticmethod
    def _endpoints_body(svc: ServiceRuntime) -> dict[str, Any]:
        return {
            "service_id": svc.service_id,
            "service_name": svc.config.name,
            "endpoints": [inst.endpoint() for inst in svc.listed()],
        }

    def _details_body(self, svc: ServiceRuntime) -> dict[str, Any]:
        cfg = svc.config
        listed = svc.listed()
        return {
            "service_id": svc.service_id,
            "service_name": cfg.name,
            "description": "",
            "status": svc.status,
            "infer_type": "real-time",
            "project": cfg.project_id,
            "is_shared": False,
            "progress": 100 if svc.status == "running" else 0,
            "invocation_times": 0,
            "failed_times": 0,
            "config": [{
                "model_id": f"model-{svc.service_id[:8]}",
                "model_name": cfg.name,
                "model_version": "1.0.0",
                "weight": 100,
                "instance_count": len(listed),
                "specification": "modelarts.vm.cpu.2u",
                "envs": {},
            }],
            "additional_properties": {},
        }

    def _list_body(self, request: web.Request, project_id: str) -> web.Response:
        wanted = request.query.get("service_name")
        services = [
            {"service_id": s.service_id, "service_name": s.config.name, "status": s.status,
             "infer_type": "real-time", "project": s.config.project_id}
            for s in self.fleet.services.values()
            if s.config.project_id == project_id and (wanted is None or wanted in s.config.name)
        ]
        return web.json_response({"total_count": len(services), "count": len(services), "services": services})
