"""Sources produce endpoint sets for the snapshot store (one module per source, like external-dns).

A running source is a `Source`: the composition root (agent/app/) and the controller's pipeline start,
stop and report every source alike, whether it polls ModelArts (`poller.Poller`) or watches
EndpointSlices (`kubernetes.KubernetesSource`).
"""

from __future__ import annotations

from typing import Any, Protocol


class Source(Protocol):
    # What /status and metrics call it ("modelarts", "endpointslices-chat").
    name: str
    # For a person: "the ModelArts poller" (/readyz says it "has died" when its thread ends).
    description: str

    def start(self) -> object:
        """Start its thread; it feeds the store until stopped."""
        ...

    def stop(self) -> None:
        """Ask it to end (its stop event may be its process's) and wait briefly for it; idempotent."""
        ...

    def alive(self) -> bool:
        """Its thread runs (false before start, and after it died or stopped)."""
        ...

    @property
    def last_error(self) -> str | None:
        """The last failure of the source itself (a watch, the poll loop); per-service errors are in the store."""
        ...

    def status(self) -> dict[str, Any]:
        """Its entry in /status `sources`: name, kind, alive, last_error, and what its kind adds."""
        ...
