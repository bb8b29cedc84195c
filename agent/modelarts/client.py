"""The ModelArts discovery client: every call waits for the rate budget, then authenticates.

It never raises anything but `DiscoveryError` (and its subclasses), each with a short `kind`
that becomes a metric label, and a message that never contains a credential.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from typing import Any

import requests

from agent.clock import SYSTEM_CLOCK, Clock
from agent.config import AgentConfig, AuthMode
from agent.errors import AuthError, CredentialsError, DiscoveryError, ThrottledError
from agent.modelarts.auth import AkSkAuth, Authenticator, IamTokenAuth, StaticTokenAuth
from agent.modelarts.budget import BudgetRegistry, RateBudget
from agent.modelarts.credentials import Credentials, credentials_from_config
from agent.modelarts.host_state import TokenCache
from agent.modelarts.parse import ParsedEndpoints, parse_endpoints
from agent.modelarts.responses import parse_retry_after, read_capped, read_error_body
from agent.validation import IPNetwork, parse_networks

log = logging.getLogger(__name__)

SERVICE_STATUSES = ("running", "deploying", "concerning", "failed", "stopped", "stopping", "pending", "waiting")


@dataclass(frozen=True)
class ServiceInfo:
    service_id: str
    name: str | None
    status: str


class Stopped(DiscoveryError):
    def __init__(self) -> None:
        super().__init__("agent is stopping", kind="stopped")


def _error_text(status: int, raw: bytes) -> str:
    """The gateway's error_code/error_msg (or IAM's error.code/message), cut short: bodies are untrusted."""
    try:
        body = json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        return f"HTTP {status}"
    if not isinstance(body, dict):
        return f"HTTP {status}"
    error = body.get("error")
    nested: dict[str, Any] = error if isinstance(error, dict) else {}
    code = body.get("error_code") or nested.get("code")
    msg = body.get("error_msg") or nested.get("message")
    if code or msg:
        return f"HTTP {status} {_printable(code, 40)}: {_printable(msg, 200)}"
    return f"HTTP {status}"


def _printable(value: object, limit: int) -> str:
    """At most `limit` characters, control characters replaced: the text ends up in logs and status."""
    text = str(value)[:limit]
    return "".join(c if c.isprintable() else "?" for c in text)


class ModelArtsClient:
    def __init__(self, modelarts_url: str, project_id: str, auth: Authenticator, budget: RateBudget,
                 session: requests.Session, timeout: float, max_body_bytes: int, clock: Clock = SYSTEM_CLOCK,
                 stop: threading.Event | None = None) -> None:
        self.modelarts_url = modelarts_url.rstrip("/")
        self.project_id = project_id
        self.auth = auth
        self.budget = budget
        self._session = session
        self._timeout = timeout
        self._max_body = max_body_bytes
        self._clock = clock
        self._stop = stop

    # -- public API ----------------------------------------------------------------------------

    def get_endpoints(self, service_id: str, allowed: tuple[IPNetwork, ...], max_endpoints: int,
                      project_id: str | None = None) -> ParsedEndpoints:
        path = f"/v1/{project_id or self.project_id}/services/{service_id}/predict/endpoints"
        body = self._get_json(path, {"type": "host_endpoints"})
        return parse_endpoints(body, allowed, max_endpoints)

    def get_service(self, service_id: str, project_id: str | None = None) -> ServiceInfo:
        body = self._get_json(f"/v1/{project_id or self.project_id}/services/{service_id}", {})
        if not isinstance(body, dict) or not isinstance(body.get("status"), str):
            raise DiscoveryError("service details response has no status", kind="malformed")
        status = body["status"].lower()
        if status not in SERVICE_STATUSES:
            raise DiscoveryError(f"service details carry an unknown status {status[:30]!r}", kind="malformed")
        name = body.get("service_name")
        return ServiceInfo(service_id=service_id, name=name if isinstance(name, str) else None, status=status)

    # -- transport -----------------------------------------------------------------------------

    def _get_json(self, path: str, params: dict[str, str]) -> Any:
        url = self.modelarts_url + path
        if params:
            url += "?" + "&".join(f"{k}={v}" for k, v in params.items())
        for attempt in (1, 2):
            resp, deadline = self._send(url)
            if resp.status_code == 401 and attempt == 1 and self.auth.on_unauthorized(resp):
                log.info("ModelArts answered 401; retrying once with fresh credentials", extra={"path": path})
                resp.close()
                continue
            return self._decode(resp, deadline)
        raise AssertionError("unreachable")

    def _send(self, url: str) -> tuple[requests.Response, float]:
        """The response (headers read, body not) and the deadline by which its body must be in."""
        if not self.budget.acquire(self._stop):
            raise Stopped()
        try:
            headers = self.auth.headers_for("GET", url, None)
        except DiscoveryError:
            raise
        except CredentialsError as exc:
            raise AuthError(str(exc)) from None
        except Exception as exc:  # the SDK signer raises plain ValueErrors
            raise AuthError(f"cannot sign the request: {type(exc).__name__}") from None
        # One total deadline for headers and body, whatever the status (a slow 503 included).
        deadline = self._clock.monotonic() + self._timeout
        try:
            return self._session.get(url, headers=headers, timeout=self._timeout, stream=True), deadline
        except requests.Timeout:
            raise DiscoveryError("ModelArts did not answer in time", kind="timeout") from None
        except requests.ConnectionError as exc:
            raise DiscoveryError(f"cannot reach ModelArts: {type(exc).__name__}", kind="connection") from None
        except requests.RequestException as exc:
            raise DiscoveryError(f"request failed: {type(exc).__name__}", kind="connection") from None

    def _decode(self, resp: requests.Response, deadline: float) -> Any:
        status = resp.status_code
        if status != 200:
            # Read (capped, under the deadline) only for the message; the status decides the error.
            text = _error_text(status, read_error_body(resp, deadline, self._clock))
            if status == 429:
                retry_after = parse_retry_after(resp.headers.get("Retry-After"), self._clock.wall())
                raise ThrottledError(f"throttled by the API gateway ({text})", retry_after=retry_after)
            if status in (401, 403):
                raise AuthError(f"ModelArts refused the credentials ({text})", status=status)
            if status == 404:
                raise DiscoveryError(f"service not found ({text})", kind="not_found", status=404)
            if status >= 500:
                raise DiscoveryError(f"ModelArts server error ({text})", kind="server_error", status=status)
            raise DiscoveryError(f"unexpected answer ({text})", kind="http_error", status=status)
        raw = read_capped(resp, self._max_body, deadline, self._clock)
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise DiscoveryError("response body is not valid JSON", kind="malformed") from None


def build_authenticator(config: AgentConfig, creds: Credentials, session: requests.Session,
                        clock: Clock = SYSTEM_CLOCK, token_cache: TokenCache | None = None) -> Authenticator:
    project_id = config.modelarts.project_id
    if creds.mode is AuthMode.password:
        return IamTokenAuth(config.modelarts.iam_url, creds, project_id, session, config.modelarts.timeout_seconds,
                            config.auth.token_refresh_margin_seconds, clock, config.modelarts.max_body_bytes,
                            token_cache)
    if creds.mode is AuthMode.aksk:
        assert creds.ak is not None and creds.sk is not None
        return AkSkAuth(creds.ak, creds.sk, project_id, clock)
    assert creds.token is not None
    return StaticTokenAuth(creds.token)


def make_session(config: AgentConfig) -> requests.Session:
    session = requests.Session()
    if not config.modelarts.verify_tls:
        session.verify = False
        log.warning("TLS verification for IAM and ModelArts is OFF (modelarts.verify_tls: false)")
    elif config.modelarts.ca_file is not None:
        session.verify = str(config.modelarts.ca_file)
    # Never let an environment proxy see the credentials or reroute discovery.
    session.trust_env = False
    return session


def build_client(config: AgentConfig, budgets: BudgetRegistry, clock: Clock = SYSTEM_CLOCK,
                 stop: threading.Event | None = None, token_cache: TokenCache | None = None) -> ModelArtsClient:
    creds = credentials_from_config(config.auth)
    session = make_session(config)
    identity = creds.identity()
    return ModelArtsClient(
        modelarts_url=config.modelarts.modelarts_url,
        project_id=config.modelarts.project_id,
        auth=build_authenticator(config, creds, session, clock, token_cache),
        budget=budgets.budget(identity.user, identity.tenant, scope=config.modelarts.modelarts_url),
        session=session,
        timeout=config.modelarts.timeout_seconds,
        max_body_bytes=config.modelarts.max_body_bytes,
        clock=clock,
        stop=stop,
    )


def allowed_networks(config: AgentConfig) -> tuple[IPNetwork, ...]:
    return parse_networks(config.discovery.allowed_cidrs)
