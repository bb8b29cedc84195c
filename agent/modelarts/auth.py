"""The three ways to authenticate ModelArts calls: IAM password token, AK/SK signature, static token."""

from __future__ import annotations

import email.utils
import json
import logging
import threading
from datetime import UTC, datetime
from typing import Protocol
from urllib.parse import parse_qsl, urlsplit

import requests
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer

from agent.clock import SYSTEM_CLOCK, Clock
from agent.errors import AuthError, DiscoveryError
from agent.logs import register_secret
from agent.modelarts.credentials import Credentials, SecretSource
from agent.modelarts.host_state import TokenCache, state_key
from agent.modelarts.responses import read_capped, read_error_body

log = logging.getLogger(__name__)

# Clock differences smaller than this are left alone (the gateway allows 15 minutes).
SKEW_TOLERANCE_SECONDS = 60.0
# Token lifetimes IAM claims are believed within these bounds: an `expires_at` in the past must not
# turn every look-up into a token request, and one years away must not pin a token forever.
MIN_TOKEN_LIFETIME_SECONDS = 60.0
MAX_TOKEN_LIFETIME_SECONDS = 24 * 3600.0
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024


class Authenticator(Protocol):
    def headers_for(self, method: str, url: str, body: bytes | None) -> dict[str, str]:
        """Headers that authenticate this exact request."""
        ...

    def on_unauthorized(self, response: requests.Response) -> bool:
        """React to a 401 (drop a cached token, correct clock skew); True if one retry can help."""
        ...


class StaticTokenAuth:
    def __init__(self, token: SecretSource) -> None:
        self._token = token

    def headers_for(self, method: str, url: str, body: bytes | None) -> dict[str, str]:
        return {"X-Auth-Token": self._token.get()}

    def on_unauthorized(self, response: requests.Response) -> bool:
        # A static token cannot be renewed by us; the file is re-read on every call anyway.
        return False


class AkSkAuth:
    """Signs each request with huaweicloudsdkcore's signer (SDK-HMAC-SHA256)."""

    def __init__(self, ak: SecretSource, sk: SecretSource, project_id: str, clock: Clock = SYSTEM_CLOCK) -> None:
        self._ak = ak
        self._sk = sk
        self._project_id = project_id
        self._clock = clock
        # Seconds to add to our clock to get the gateway's (learnt from a skew refusal).
        self._offset = 0.0

    def headers_for(self, method: str, url: str, body: bytes | None) -> dict[str, str]:
        parts = urlsplit(url)
        sdk_date = datetime.fromtimestamp(self._clock.wall() + self._offset, UTC).strftime("%Y%m%dT%H%M%SZ")
        headers = {"X-Sdk-Date": sdk_date, "X-Project-Id": self._project_id}
        if body:
            headers["Content-Type"] = "application/json"
        request = SdkRequest(
            method=method.upper(),
            schema=parts.scheme,
            host=parts.netloc,
            resource_path=parts.path,
            query_params=parse_qsl(parts.query, keep_blank_values=True),
            header_params=headers,
            body=body or "",
        )
        credentials = BasicCredentials(self._ak.get(), self._sk.get(), self._project_id)
        signed = Signer(credentials).sign(request)
        return {str(k): str(v) for k, v in signed.header_params.items()}

    def on_unauthorized(self, response: requests.Response) -> bool:
        """The gateway refuses dates more than 15 minutes off: sign with its clock from then on."""
        server_time = _response_date(response)
        if server_time is None:
            return False
        offset = server_time - self._clock.wall()
        if abs(offset - self._offset) < SKEW_TOLERANCE_SECONDS:
            return False
        log.warning("this host's clock differs from the API gateway's by %.0f s; signing with the gateway's "
                    "time (fix NTP on this host)", offset)
        self._offset = offset
        return True


def _response_date(response: requests.Response) -> float | None:
    raw = response.headers.get("Date")
    if not raw:
        return None
    try:
        return email.utils.parsedate_to_datetime(raw).timestamp()
    except (TypeError, ValueError):
        return None


class IamTokenAuth:
    """An IAM token from the password method, refreshed before `expires_at` and after a 401."""

    def __init__(self, iam_url: str, credentials: Credentials, project_id: str, session: requests.Session,
                 timeout: float, refresh_margin: float, clock: Clock = SYSTEM_CLOCK,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, cache: TokenCache | None = None) -> None:
        if credentials.password is None or not credentials.domain or not credentials.user:
            raise AuthError("password auth needs a domain, a user and a password")
        self._iam_url = iam_url
        self._creds = credentials
        self._password = credentials.password
        self._project_id = project_id
        self._session = session
        self._timeout = timeout
        self._margin = refresh_margin
        self._clock = clock
        self._max_body = max_body_bytes
        # Tokens shared with this user's other processes (host_state.TokenCache), keyed by a hash.
        self._cache = cache
        self._cache_key = state_key(iam_url, str(credentials.domain), str(credentials.user), project_id)
        self._lock = threading.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0
        self.issued_total = 0

    def headers_for(self, method: str, url: str, body: bytes | None) -> dict[str, str]:
        return {"X-Auth-Token": self._current_token()}

    def on_unauthorized(self, response: requests.Response) -> bool:
        with self._lock:
            if self._cache is not None and self._token is not None:
                self._cache.drop(self._cache_key, self._token)  # nobody else should try it either
            self._token = None
        return True

    def _current_token(self) -> str:
        with self._lock:
            now = self._clock.wall()
            if self._token is None or now >= self._refresh_at:
                cached = self._cache.get(self._cache_key, now) if self._cache is not None else None
                if cached is not None:
                    register_secret(cached[0], slot=f"iam-token:{self._cache_key}")
                    self._token, self._refresh_at = cached
                else:
                    self._token, self._refresh_at = self._issue()
                    if self._cache is not None:
                        self._cache.put(self._cache_key, self._token, self._refresh_at)
            return self._token

    def _issue(self) -> tuple[str, float]:
        body = {
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {
                        "user": {
                            "name": self._creds.user,
                            "password": self._password.get(),
                            "domain": {"name": self._creds.domain},
                        }
                    },
                },
                "scope": {"project": {"id": self._project_id}},
            }
        }
        url = f"{self._iam_url}/v3/auth/tokens"
        # The same total deadline and size cap as every ModelArts answer, whatever the status.
        deadline = self._clock.monotonic() + self._timeout
        try:
            resp = self._session.post(url, json=body, timeout=self._timeout, stream=True)
        except requests.Timeout:
            raise DiscoveryError("IAM token request timed out", kind="iam_timeout") from None
        except requests.RequestException as exc:
            raise DiscoveryError(f"IAM unreachable: {type(exc).__name__}", kind="iam_unreachable") from None
        if resp.status_code != 201:
            read_error_body(resp, deadline, self._clock)  # drained (capped) so the connection can be reused
            if resp.status_code in (401, 403):
                raise AuthError(f"IAM refused the credentials of user {self._creds.user!r} "
                                f"(HTTP {resp.status_code})", status=resp.status_code)
            raise DiscoveryError(f"IAM answered HTTP {resp.status_code} to the token request", kind="iam_error",
                                 status=resp.status_code)
        token = resp.headers.get("X-Subject-Token", "")
        try:
            raw = read_capped(resp, self._max_body, deadline, self._clock)
        except DiscoveryError as exc:
            raise DiscoveryError(f"IAM token answer unusable: {exc}", kind="iam_error") from None
        if not token:
            raise DiscoveryError("IAM answered 201 without an X-Subject-Token header", kind="iam_error")
        # One slot per IAM identity: each refresh replaces the token before last (a bounded set).
        register_secret(token, slot=f"iam-token:{self._cache_key}")
        now = self._clock.wall()
        expires = _parse_expiry(raw)
        lifetime = (expires - now) if expires is not None else 3600.0
        if lifetime <= 0:
            log.warning("IAM says the new token has already expired (check this host's clock); using it for "
                        "%.0f s or until refused", MIN_TOKEN_LIFETIME_SECONDS)
            lifetime = MIN_TOKEN_LIFETIME_SECONDS
        lifetime = min(lifetime, MAX_TOKEN_LIFETIME_SECONDS)
        # Refresh early, but never so early that a short-lived token is refreshed on every call.
        margin = min(self._margin, max(lifetime, 0.0) / 10)
        self.issued_total += 1
        log.info("obtained IAM token", extra={"iam_user": self._creds.user, "valid_for_s": round(lifetime)})
        return token, now + lifetime - margin


def _parse_expiry(raw: bytes) -> float | None:
    try:
        value = json.loads(raw)["token"]["expires_at"]
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        if parsed.tzinfo is None:  # IAM writes UTC; a zone-less time is read as UTC too
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    except (ValueError, KeyError, TypeError, OverflowError, OSError, RecursionError):
        log.warning("IAM token response has no usable token.expires_at; assuming one hour")
        return None
