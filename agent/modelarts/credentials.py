"""Secrets from env vars or files (a mounted Secret), re-read when the file changes.

Secret values are registered with `agent.logs.redact` as soon as they are read, so that even
an accidental log line cannot carry them.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from agent.config import AuthConfig, AuthMode
from agent.errors import ConfigError, CredentialsError
from agent.logs import register_secret


class SecretSource:
    """One secret: a file (preferred, re-read on change) or an environment variable."""

    def __init__(self, label: str, path: Path | None, env_name: str | None) -> None:
        self.label = label
        self._path = path
        self._env = env_name
        self._lock = threading.Lock()
        self._cached: tuple[tuple[int, int, int, int], str] | None = None

    def describe(self) -> str:
        return f"file {self._path}" if self._path else f"env var {self._env}"

    def get(self) -> str:
        if self._path is not None:
            return self._from_file(self._path)
        value = os.environ.get(self._env or "", "")
        if not value:
            raise CredentialsError(f"{self.label} is not set: expected it in env var {self._env}")
        register_secret(value, slot=f"{self.label}:env:{self._env}")
        return value

    def _from_file(self, path: Path) -> str:
        try:
            st = path.stat()
        except OSError as exc:
            raise CredentialsError(f"cannot read {self.label} from {path}: {exc.strerror}") from None
        # Which file, not only when: a kubelet `..data` swap brings a new inode, and two swaps can land
        # within one coarse timestamp tick.
        stamp = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        with self._lock:
            if self._cached and self._cached[0] == stamp:
                return self._cached[1]
            try:
                value = path.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                raise CredentialsError(f"cannot read {self.label} from {path}: {reason}") from None
            if not value:
                raise CredentialsError(f"{self.label} file {path} is empty")
            register_secret(value, slot=f"{self.label}:file:{path}")  # a rotation replaces the old value
            self._cached = (stamp, value)
            return value


@dataclass(frozen=True)
class Identity:
    """Who the rate limits count against. Never contains a secret."""

    user: str
    tenant: str


def _fingerprint(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:12]


@dataclass
class Credentials:
    mode: AuthMode
    domain: str | None
    user: str | None
    password: SecretSource | None = None
    ak: SecretSource | None = None
    sk: SecretSource | None = None
    token: SecretSource | None = None

    def identity(self) -> Identity:
        if self.mode is AuthMode.password:
            return Identity(user=f"user:{self.domain}/{self.user}", tenant=f"domain:{self.domain}")
        if self.mode is AuthMode.aksk and self.ak is not None:
            # The AK is an identifier, but a fingerprint keeps it out of metrics labels anyway.
            user = f"ak:{_fingerprint(self.ak.get())}"
        else:
            user = (self.user and f"user:{self.domain}/{self.user}") or "static-token"
        return Identity(user=user, tenant=f"domain:{self.domain}" if self.domain else user)


def credentials_from_config(auth: AuthConfig) -> Credentials:
    creds = Credentials(mode=auth.mode, domain=auth.domain, user=auth.user)
    if auth.mode is AuthMode.password:
        creds.password = SecretSource("IAM password", auth.password_file, auth.password_env)
    elif auth.mode is AuthMode.aksk:
        creds.ak = SecretSource("access key (AK)", auth.ak_file, auth.ak_env)
        creds.sk = SecretSource("secret key (SK)", auth.sk_file, auth.sk_env)
    else:
        creds.token = SecretSource("static token", auth.token_file, auth.token_env)
    return creds


class CredentialSourceError(ConfigError):
    """A credential source the config names cannot be read at start-up: a configuration error (exit 2).

    At run time (after a rotation) the same problem is a sync error instead: the agent keeps its
    last-known-good endpoints and retries.
    """


def check_sources(creds: Credentials) -> None:
    """Read every configured secret once; raise CredentialSourceError naming the source, never a value."""
    for source in (creds.password, creds.ak, creds.sk, creds.token):
        if source is None:
            continue
        try:
            source.get()
        except CredentialsError as exc:
            raise CredentialSourceError(f"cannot start: {exc}") from None
