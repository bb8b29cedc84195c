"""The data model every sink reads: validated endpoints grouped per service, in an immutable snapshot.

Like go-control-plane's snapshot cache, a `Snapshot` is never mutated: a change produces a new
snapshot with a higher version, and every sink renders from whichever snapshot it holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from agent.config import ServiceSpec

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


@dataclass(frozen=True)
class ServiceSnapshot:
    """What sinks need for one configured service: its spec and its current endpoint set."""

    spec: ServiceSpec
    endpoints: tuple[Endpoint, ...] = ()
    # None until the first successful sync; sinks may render an empty cluster meanwhile.
    synced: bool = False

    @property
    def name(self) -> str:
        return self.spec.name


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
