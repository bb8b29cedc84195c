"""The data model every sink reads: validated endpoints grouped per service, in an immutable snapshot.

Discovery data only (which services, their ModelArts ids, endpoints and whether they synced): how a
sink renders a service (Envoy policy, the Kubernetes Service shape) comes from that sink's own
config, joined by service name. This module imports nothing else of `agent`.

Like go-control-plane's snapshot cache, a `Snapshot` is never mutated: a change produces a new
snapshot with a higher version, and every sink renders from whichever snapshot it holds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

Schema = Literal["http", "https", "grpc", "tcp"]
SCHEMAS: tuple[Schema, ...] = ("http", "https", "grpc", "tcp")


@dataclass(frozen=True, order=True)
class Endpoint:
    """One inference instance, already validated (see `agent.validation`)."""

    ip: str
    port: int
    schema: Schema = "http"
    ready: bool = True

    @property
    def address(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


def effective_protocol(spec_protocol: str, endpoints: Iterable[Endpoint]) -> Schema:
    """The one rule for `protocol: auto`, used by every sink (Envoy files, xDS, Kubernetes objects).

    A configured protocol is used as is. `auto` follows the schema ModelArts reports for the
    instances: when they disagree (e.g. halfway through a redeployment), the most common one, ties
    broken by the fixed order http, https, grpc, tcp so the result never depends on endpoint order;
    before any instance is known, http (what ModelArts real-time services serve unless told
    otherwise). The controller writes the result on the Service and slice ports, and a sidecar reads
    it back from there, so `run`, the controller and its sidecars always agree.
    """
    if spec_protocol != "auto":
        return spec_protocol  # type: ignore[return-value]
    counts = Counter(e.schema for e in endpoints)
    if not counts:
        return "http"
    return max(SCHEMAS, key=lambda schema: (counts[schema], -SCHEMAS.index(schema)))


@dataclass(frozen=True)
class ServiceSnapshot:
    """One configured service as discovery sees it: name, ModelArts service id, endpoints, sync state."""

    name: str
    service_id: str
    endpoints: tuple[Endpoint, ...] = ()
    # False until the first successful sync; sinks may render an empty cluster meanwhile.
    synced: bool = False


def _frozen(services: Mapping[str, ServiceSnapshot]) -> Mapping[str, ServiceSnapshot]:
    return MappingProxyType(dict(sorted(services.items())))


@dataclass(frozen=True)
class Snapshot:
    version: int
    services: Mapping[str, ServiceSnapshot] = field(default_factory=lambda: MappingProxyType({}))

    def with_services(self, services: Mapping[str, ServiceSnapshot]) -> Snapshot:
        return Snapshot(version=self.version + 1, services=_frozen(services))

    def content_equal(self, services: Mapping[str, ServiceSnapshot]) -> bool:
        return dict(self.services) == dict(services)


EMPTY_SNAPSHOT = Snapshot(version=0)
