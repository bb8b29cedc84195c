"""IAM stand-in: the user directory, the token store, and `POST /v3/auth/tokens`.

Only the Keystone password method with a project scope is implemented, because that is what
the agent uses. Tokens are long random strings (real ones run to several KB, so clients must not
assume a short header); they expire after `token_ttl_seconds` of emulator time and the admin
can revoke them all at once to exercise a client's re-authentication on 401.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from modelarts_emulator.config import UserConfig
from modelarts_emulator.faults import ArmedFault, FaultBoard, apply_header_edits, respond
from modelarts_emulator.throttle import CallLog, EmulatorClock

TOKEN_HEADER = "X-Subject-Token"
WRONG_PASSWORD = "The username or password is wrong."


def iso_z(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Directory:
    """Users, their access keys and the projects of each domain (tenant)."""

    def __init__(self, users: list[UserConfig]) -> None:
        self.users = users
        self._by_ak = {k.ak: (u, k.sk.get_secret_value()) for u in users for k in u.access_keys}

    def find_user(self, domain: str, name: str) -> UserConfig | None:
        return next((u for u in self.users if u.domain == domain and u.name == name), None)

    def owner_of(self, ak: str) -> UserConfig | None:
        found = self._by_ak.get(ak)
        return found[0] if found else None

    def secret_for(self, ak: str) -> str | None:
        found = self._by_ak.get(ak)
        return found[1] if found else None

    def domain_projects(self, domain: str) -> dict[str, str]:
        """project_id -> project_name for every project in the domain."""
        return {u.project_id: u.project_name for u in self.users if u.domain == domain}


@dataclass(frozen=True)
class IssuedToken:
    user: UserConfig
    project_id: str
    project_name: str
    issued_at: float
    expires_at: float


class TokenError(Exception):
    pass


class TokenStore:
    def __init__(self, clock: EmulatorClock, ttl_seconds: float) -> None:
        self._clock = clock
        self.ttl_seconds = ttl_seconds
        self._tokens: dict[str, IssuedToken] = {}

    def issue(self, user: UserConfig, project_id: str, project_name: str) -> tuple[str, IssuedToken]:
        now = self._clock.now()
        self._tokens = {t: v for t, v in self._tokens.items() if v.expires_at > now}
        token = "MII" + secrets.token_urlsafe(1536)
        issued = IssuedToken(user, project_id, project_name, now, now + self.ttl_seconds)
        self._tokens[token] = issued
        return token, issued

    def validate(self, token: str) -> IssuedToken:
        issued = self._tokens.get(token)
        if issued is None:
            raise TokenError("token is invalid or revoked")
        if issued.expires_at <= self._clock.now():
            raise TokenError("token expired")
        return issued

    def revoke_all(self) -> int:
        count = len(self._tokens)
        self._tokens.clear()
        return count

    def __len__(self) -> int:
        return len(self._tokens)


def iam_error(status: int, title: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": status, "message": message, "title": title}}, status=status)


class _BadRequest(Exception):
    pass


def _dig(body: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(body, dict) or key not in body:
            raise _BadRequest("missing " + ".".join(keys))
        body = body[key]
    return body


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise _BadRequest(f"{what} must be a non-empty string")
    return value


def parse_password_auth(body: Any) -> tuple[str, str, str, dict[str, Any]]:
    """(user name, password, domain name, scope.project) from a Keystone password body."""
    methods = _dig(body, "auth", "identity", "methods")
    if methods != ["password"]:
        raise _BadRequest("auth.identity.methods must be [\"password\"]")
    user = _dig(body, "auth", "identity", "password", "user")
    name = _str(_dig(user, "name"), "user.name")
    password = _str(_dig(user, "password"), "user.password")
    domain = _str(_dig(user, "domain", "name"), "user.domain.name")
    project = _dig(body, "auth", "scope", "project")
    if not isinstance(project, dict) or not any(isinstance(project.get(k), str) for k in ("id", "name")):
        raise _BadRequest("auth.scope.project needs an id or a name")
    return name, password, domain, project


class IamApi:
    def __init__(self, directory: Directory, tokens: TokenStore, clock: EmulatorClock, calls: CallLog,
                 faults: FaultBoard | None = None) -> None:
        self.directory = directory
        self.tokens = tokens
        self.clock = clock
        self.calls = calls
        self.faults = faults if faults is not None else FaultBoard()
        self.down = False

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v3/auth/tokens", self.issue_token)
        app.on_response_prepare.append(self._fault_headers)

    async def _fault_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        apply_header_edits(request, response)

    def make_app(self) -> web.Application:
        app = web.Application()
        self.add_routes(app)
        app.router.add_route("*", "/{tail:.*}", self.not_found)
        return app

    async def not_found(self, request: web.Request) -> web.Response:
        self._log(request, 404)
        return iam_error(404, "Not Found", "The requested resource could not be found.")

    def _log(self, request: web.Request, status: int, user: UserConfig | None = None,
             fault: ArmedFault | None = None) -> None:
        self.calls.add(
            time=self.clock.now(), api="iam", method=request.method, path=request.path,
            query=request.query_string, user=user.name if user else None,
            domain=user.domain if user else None, auth="password", status=status,
            fault=fault.spec.kind if fault else None,
        )

    async def issue_token(self, request: web.Request) -> web.StreamResponse:
        if self.down:
            self._log(request, 503)
            return iam_error(503, "Service Unavailable", "The service is currently unavailable.")
        fault = self.faults.take("", "iam", self.clock.now(), throttle=None)
        # Faults that shape the real answer's body (a dribbled, cut or padded token answer) need it first.
        around_answer = fault is not None and (fault.spec.kind in ("slowloris", "malformed", "oversized")
                                               or (fault.spec.kind == "custom" and fault.spec.body == "normal"))
        if fault is not None and not around_answer:
            # Answered before the password is even looked at, like an overloaded or broken front.
            status = 0
            try:
                response, status = await respond(fault, request, {}, shape="iam", normal_status=201)
                return response
            finally:
                self._log(request, status, fault=fault)
        response, user = await self._issue(request)
        if fault is None:
            self._log(request, response.status, user)
            return response
        # A fault around the real answer: a real token, but its status, headers or body altered.
        status = 0
        normal = json.loads(response.body) if isinstance(response.body, bytes) and response.body else {}
        headers = {k: v for k, v in response.headers.items() if k.lower() == TOKEN_HEADER.lower()}
        try:
            altered, status = await respond(fault, request, normal, shape="iam", normal_status=response.status,
                                            normal_headers=headers)
            return altered
        finally:
            self._log(request, status, user, fault)

    async def _issue(self, request: web.Request) -> tuple[web.Response, UserConfig | None]:
        """The real answer to a token request, and the user it authenticated (if any)."""
        try:
            body = await request.json()
            name, password, domain, project = parse_password_auth(body)
        except (ValueError, _BadRequest) as exc:
            return iam_error(400, "Bad Request", f"The request body is malformed: {exc}"), None
        user = self.directory.find_user(domain, name)
        # Same answer (and a constant-time compare) for unknown user, domain or password.
        expected = user.password.get_secret_value() if user else secrets.token_hex(16)
        if user is None or not hmac.compare_digest(expected.encode(), password.encode()):
            return iam_error(401, "Unauthorized", WRONG_PASSWORD), None
        projects = self.directory.domain_projects(user.domain)
        pid = project.get("id")
        if pid is None:
            pid = next((i for i, n in projects.items() if n == project.get("name")), None)
        if pid not in projects:
            return iam_error(401, "Unauthorized", "The project does not exist or the user has no access to it."), user
        token, issued = self.tokens.issue(user, pid, projects[pid])
        domain_ref = {"id": user.domain_id, "name": user.domain}
        payload = {
            "token": {
                "expires_at": iso_z(issued.expires_at),
                "issued_at": iso_z(issued.issued_at),
                "methods": ["password"],
                "user": {"domain": domain_ref, "id": user.user_id, "name": user.name, "password_expires_at": ""},
                "project": {"domain": domain_ref, "id": pid, "name": projects[pid]},
                "roles": [{"id": "0", "name": "te_admin"}],
                "catalog": [],
            }
        }
        return web.json_response(payload, status=201, headers={TOKEN_HEADER: token}), user
