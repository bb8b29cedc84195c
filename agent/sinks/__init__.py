"""Sinks publish snapshots: Envoy files, the xDS server, Kubernetes objects (one folder per provider)."""

from __future__ import annotations

from typing import Protocol

from agent.errors import AgentError
from agent.model import Snapshot


class SinkError(AgentError):
    """A sink could not write (some of) its output; the message says which and why."""


class Sink(Protocol):
    name: str

    def publish(self, snapshot: Snapshot) -> None:
        """Make the outside world match `snapshot`; raise on failure (the runner retries)."""
        ...
