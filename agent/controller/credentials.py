"""ModelArts credentials from the Secret a ModelArtsService references, re-read so rotations apply live.

The Secret lives in the CR's own namespace (the CR names it, never its namespace), so a CR can
only point the controller at Secrets of its own namespace. Keys, all as plain Secret data:

- `domain`, `user`, `password`: IAM password auth (a token per project, refreshed)
- `ak`, `sk` (optionally `domain`): AK/SK request signing
- `token` (optionally `domain`, `user`): a static IAM token

Secrets are read with GET only (no list/watch): the controller's RBAC then cannot enumerate
Secrets, only fetch the ones CRs name. Changes are noticed by re-reading every few seconds.
Values are registered for log redaction the moment they are decoded, and no message built
here ever contains one (key names only).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from agent.config import AuthMode
from agent.controller.status import Problem
from agent.kube.client import KubeApiError, KubeClient, object_path
from agent.logs import register_secret
from agent.modelarts.credentials import Credentials, SecretSource

log = logging.getLogger(__name__)

SecretRef = tuple[str, str]  # (namespace, name)
# Values redacted from logs; domain and user are names, not secrets, and stay readable.
SECRET_KEYS = frozenset({"password", "ak", "sk", "token"})


class CredentialsProblem(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.problem = Problem(reason, message)


class _Value(SecretSource):
    """One decoded Secret value, handed to the authenticators like a file- or env-backed secret."""

    def __init__(self, label: str, value: str) -> None:
        super().__init__(label, None, None)
        register_secret(value)
        self._value = value

    def describe(self) -> str:
        return f"Secret key {self.label}"

    def get(self) -> str:
        return self._value


@dataclass(frozen=True)
class SecretCredentials:
    namespace: str
    name: str
    mode: AuthMode
    domain: str | None
    user: str | None
    values: Mapping[str, str] = field(repr=False)
    # Changes whenever any key changes; used to rebuild clients after a rotation.
    fingerprint: str = ""

    def credentials(self) -> Credentials:
        creds = Credentials(mode=self.mode, domain=self.domain, user=self.user)
        if self.mode is AuthMode.password:
            creds.password = _Value("password", self.values["password"])
        elif self.mode is AuthMode.aksk:
            creds.ak = _Value("ak", self.values["ak"])
            creds.sk = _Value("sk", self.values["sk"])
        else:
            creds.token = _Value("token", self.values["token"])
        return creds


def parse_secret(obj: dict[str, object]) -> SecretCredentials:
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
    where = f"Secret {namespace}/{name}"
    raw = obj.get("data")
    data: dict[str, str] = {}
    for key, encoded in (raw if isinstance(raw, dict) else {}).items():
        try:
            value = base64.b64decode(str(encoded), validate=True).decode("utf-8").strip()
        except (binascii.Error, UnicodeDecodeError):
            raise CredentialsProblem("InvalidSecret", f"{where}: key {key!r} is not UTF-8 text") from None
        if value:
            if key in SECRET_KEYS:
                register_secret(value)
            data[str(key)] = value
    digest = hashlib.sha256(repr(sorted(data.items())).encode()).hexdigest()
    domain, user = data.get("domain"), data.get("user")
    if "password" in data:
        if not domain or not user:
            raise CredentialsProblem("InvalidSecret", f"{where} holds a password but lacks the domain or user key")
        mode = AuthMode.password
    elif "ak" in data or "sk" in data:
        if "ak" not in data or "sk" not in data:
            raise CredentialsProblem("InvalidSecret", f"{where} needs both the ak and the sk key")
        mode = AuthMode.aksk
    elif "token" in data:
        mode = AuthMode.token
    else:
        keys = ", ".join(sorted(data)) or "none"
        raise CredentialsProblem(
            "InvalidSecret",
            f"{where} has no usable credentials: expected domain+user+password, ak+sk, or token (keys: {keys})")
    return SecretCredentials(namespace, name, mode, domain, user, data, digest)


class SecretStore:
    """The referenced Secrets, fetched on first use and re-read by `refresh()`."""

    def __init__(self, kube: KubeClient, grace_seconds: float = 60.0) -> None:
        self._kube = kube
        self._grace = grace_seconds
        self._lock = threading.Lock()
        self._cache: dict[SecretRef, SecretCredentials | Problem] = {}
        self._failing_since: dict[SecretRef, float] = {}

    def get(self, ref: SecretRef) -> SecretCredentials:
        with self._lock:
            cached = self._cache.get(ref)
        if cached is None:
            cached = self._fetch(ref)
            with self._lock:
                self._cache[ref] = cached
        if isinstance(cached, Problem):
            raise CredentialsProblem(cached.reason, cached.message)
        return cached

    def refresh(self, refs: Iterable[SecretRef]) -> set[SecretRef]:
        """Re-read these Secrets (and forget the others); return the ones whose content or error changed."""
        wanted = set(refs)
        changed: set[SecretRef] = set()
        for ref in wanted:
            fresh = self._fetch(ref)
            now = time.monotonic()
            with self._lock:
                old = self._cache.get(ref)
                # A failed read (not a definite 404) right after an apiserver restart can be a 5xx or even
                # a 403 while its RBAC cache warms up: keep the credentials that worked, for a while.
                if isinstance(fresh, Problem) and fresh.reason != "SecretNotFound" \
                        and isinstance(old, SecretCredentials):
                    since = self._failing_since.setdefault(ref, now)
                    if now - since < self._grace:
                        if since == now:
                            log.warning("cannot re-read a Secret; keeping its last good credentials: %s",
                                        fresh.message)
                        continue
                else:
                    self._failing_since.pop(ref, None)
                if old is not None and not _same(old, fresh):
                    changed.add(ref)
                self._cache[ref] = fresh
        with self._lock:
            for ref in set(self._cache) - wanted:
                del self._cache[ref]
                self._failing_since.pop(ref, None)
        return changed

    def _fetch(self, ref: SecretRef) -> SecretCredentials | Problem:
        namespace, name = ref
        try:
            obj = self._kube.get(object_path("Secret", namespace, name))
        except KubeApiError as exc:
            if exc.status == 403:
                return Problem("SecretForbidden",
                               f"the controller may not read Secret {namespace}/{name}: bind the "
                               f"modelarts-agent-credentials-reader ClusterRole in namespace {namespace}")
            return Problem("SecretUnavailable", f"cannot read Secret {namespace}/{name}: {exc}")
        if obj is None:
            return Problem("SecretNotFound", f"Secret {namespace}/{name} does not exist")
        try:
            return parse_secret(obj)
        except CredentialsProblem as exc:
            return exc.problem


def _same(old: SecretCredentials | Problem, new: SecretCredentials | Problem) -> bool:
    if isinstance(old, SecretCredentials) and isinstance(new, SecretCredentials):
        return old.fingerprint == new.fingerprint
    return old == new
