"""Errors that carry a message meant for a person, never a stack trace."""

from __future__ import annotations


class AgentError(Exception):
    """Base for errors the CLI prints as one clear line."""


class ConfigError(AgentError):
    """The configuration file, environment or flags are invalid."""


class CredentialsError(AgentError):
    """Credentials are missing or unreadable (the message never includes a secret)."""


class DiscoveryError(AgentError):
    """A ModelArts or IAM call failed; `kind` is a short, metric-friendly reason."""

    def __init__(self, message: str, kind: str = "error", status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status


class ThrottledError(DiscoveryError):
    """HTTP 429 from the API gateway; `retry_after` is seconds if the server said so."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message, kind="throttled", status=429)
        self.retry_after = retry_after


class AuthError(DiscoveryError):
    """Authentication was refused (401/403) even after one re-authentication."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message, kind="auth", status=status)
