"""Sinks publish snapshots: Envoy files, the xDS server, the state file (the controller's Kubernetes sink is
`agent.controller.sink`).

A sink is a `Sink`; what else it can do is a capability protocol it may also satisfy, checked with
`isinstance` rather than probed with `getattr`: `Reconfigurable` (takes a reloaded config),
`Weighted` (takes adaptive endpoint weights, EDS only), `Closable` (holds a port or a thread).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from agent.errors import AgentError
from agent.model import Snapshot

if TYPE_CHECKING:
    from agent.config import DataPlaneConfig

# service -> endpoint address -> weight (agent.adaptive's output; agent.envoy.clusters renders it)
EndpointWeights = Mapping[str, Mapping[str, int]]


class SinkError(AgentError):
    """A sink could not write (some of) its output; the message says which and why."""


class Sink(Protocol):
    name: str

    def publish(self, snapshot: Snapshot) -> None:
        """Make the outside world match `snapshot`; raise on failure (the runner retries)."""
        ...


@runtime_checkable
class Reconfigurable(Protocol):
    def update_config(self, config: DataPlaneConfig) -> None:
        """Hot reload: the new policies apply at the next publish."""
        ...


@runtime_checkable
class Weighted(Protocol):
    def update_weights(self, weights: EndpointWeights) -> None:
        """New adaptive weights: only the endpoint (EDS) part changes."""
        ...


@runtime_checkable
class Closable(Protocol):
    def close(self) -> None:
        """Release what the sink holds (a port, a thread); called once, on shutdown."""
        ...
