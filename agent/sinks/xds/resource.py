"""`Resource`: one xDS resource serialized once, with a content version and what it refers to.

Resources are shared by every stream and every response that carries them: the bytes of the
`Any` (and the response fields around it) are computed once per content version, never per stream.
"""

from __future__ import annotations

import hashlib
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


class ResourcePool:
    """Makes `Resource`s, reusing the previous build's object when the content is unchanged.

    Reuse keeps identity (and the cached response fields) stable across snapshot versions, so an
    endpoint change in one service re-encodes only that service's resources.
    """

    def __init__(self, previous: dict[tuple[str, str, str], Resource] | None = None) -> None:
        self._previous = previous or {}
        self.made: dict[tuple[str, str, str], Resource] = {}

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
