"""`Resource`: one xDS resource serialized once, with a content version and what it refers to.

Resources are shared by every stream and every response that carries them: the bytes of the
`Any` (and the response fields around it) are computed once per content version, never per stream.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

from google.protobuf.message import Message

from agent.sinks.xds import wire

# Field numbers (envoy.service.discovery.v3 and google.protobuf.Any); checked by the unit tests.
_ANY_TYPE_URL, _ANY_VALUE = 1, 2
_RESPONSE_RESOURCES = 2  # DiscoveryResponse.resources and DeltaDiscoveryResponse.resources
_RESOURCE_VERSION, _RESOURCE_BODY, _RESOURCE_NAME = 1, 2, 3  # discovery.v3.Resource


@dataclass(frozen=True, eq=False)
class Resource:
    type_url: str
    name: str
    version: str  # content hash: equal content, equal version, across processes and restarts
    body: bytes = field(repr=False)  # the serialized google.protobuf.Any
    clusters: frozenset[str] = frozenset()  # clusters it sends traffic to (listeners, routes)
    routes: frozenset[str] = frozenset()  # route configurations it names (listeners using RDS)

    @cached_property
    def sotw_field(self) -> bytes:
        """This resource as one `DiscoveryResponse.resources` entry."""
        return wire.length_delimited(_RESPONSE_RESOURCES, self.body)

    @cached_property
    def delta_field(self) -> bytes:
        """This resource as one `DeltaDiscoveryResponse.resources` entry (a discovery.v3.Resource)."""
        inner = (wire.string_field(_RESOURCE_VERSION, self.version) + wire.length_delimited(_RESOURCE_BODY, self.body)
                 + wire.string_field(_RESOURCE_NAME, self.name))
        return wire.length_delimited(_RESPONSE_RESOURCES, inner)


def content_version(serialized: bytes) -> str:
    return hashlib.sha256(serialized).hexdigest()[:16]


def placeholder(type_url: str, name: str, version: str) -> Resource:
    """What a reconnecting delta client says it has (`initial_resource_versions`): a version, no body."""
    return Resource(type_url=type_url, name=name, version=version, body=b"")


@dataclass(frozen=True, eq=False)
class Built:
    """One unit's resources (a service's cluster, endpoints, listener, routes) and the inputs they came from."""

    inputs: tuple[object, ...]
    resources: tuple[Resource, ...]
    context: object = None  # the config around the unit, when it depends on one (see `ResourcePool.context`)


BuiltIndex = Mapping[str, tuple[Built, ...]]  # unit name -> what was built for it (one per distinct inputs)


def _same(a: tuple[object, ...], b: tuple[object, ...]) -> bool:
    # Identity first: an unchanged service is usually the very same object in the next snapshot.
    return len(a) == len(b) and all(x is y or x == y for x, y in zip(a, b, strict=True))


class ResourcePool:
    """Makes `Resource`s, reusing the previous build's object when the content is unchanged.

    Reuse keeps identity (and the cached response fields) stable across snapshot versions. The memo
    (`recall` / `remember`) goes further: a unit whose inputs did not change is not even built or
    serialized again, so an endpoint change in one service builds and encodes only that service.
    """

    def __init__(self, previous: dict[tuple[str, str, str], Resource] | None = None,
                 previous_built: BuiltIndex | None = None) -> None:
        self._previous = previous or {}
        self._previous_built = previous_built or {}
        self.made: dict[tuple[str, str, str], Resource] = {}
        self.built: dict[str, tuple[Built, ...]] = {}
        self._contexts: list[object] | None = None

    def context(self, value: object) -> object:
        """`value`, or an equal context already known to this pool or to the previous build: contexts
        (the config around a unit) are compared once per build here, and by identity in `recall`."""
        if self._contexts is None:
            distinct = {id(e.context): e.context for entries in self._previous_built.values()
                        for e in entries if e.context is not None}
            self._contexts = list(distinct.values())
        for known in self._contexts:
            if known is value or known == value:
                return known
        self._contexts.append(value)
        return value

    def recall(self, name: str, inputs: tuple[object, ...], context: object = None) -> tuple[Resource, ...] | None:
        """What was built for `name` from equal inputs, in this build or the previous one; None if nothing."""
        for entry in (*self.built.get(name, ()), *self._previous_built.get(name, ())):
            if entry.context is context and _same(entry.inputs, inputs):
                self._keep(name, entry)
                return entry.resources
        return None

    def remember(self, name: str, inputs: tuple[object, ...], resources: tuple[Resource, ...],
                 context: object = None) -> None:
        self._keep(name, Built(inputs, resources, context))

    def _keep(self, name: str, entry: Built) -> None:
        entries = self.built.get(name, ())
        if entry not in entries:
            self.built[name] = (*entries, entry)
        for resource in entry.resources:
            self.made[(resource.type_url, resource.name, resource.version)] = resource

    def make(self, type_url: str, name: str, message: Message, clusters: frozenset[str] = frozenset(),
             routes: frozenset[str] = frozenset()) -> Resource:
        value = message.SerializeToString(deterministic=True)
        version = content_version(value)
        key = (type_url, name, version)
        resource = self.made.get(key) or self._previous.get(key)
        if resource is None:
            body = wire.string_field(_ANY_TYPE_URL, type_url) + wire.length_delimited(_ANY_VALUE, value)
            resource = Resource(type_url=type_url, name=name, version=version, body=body, clusters=clusters,
                                routes=routes)
        self.made[key] = resource
        return resource
