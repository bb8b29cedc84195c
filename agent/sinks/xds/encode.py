"""Discovery responses as bytes, built from shared resource encodings and cached by content.

Streams in the same state get the same update after a snapshot change; the body (everything but
the per-stream nonce) is encoded once and reused, and the nonce is appended as one more field.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Sequence

from envoy.service.discovery.v3 import discovery_pb2

from agent.sinks.xds import wire
from agent.sinks.xds.resource import Resource

_SOTW_NONCE = 5  # DiscoveryResponse.nonce
_DELTA_NONCE = 5  # DeltaDiscoveryResponse.nonce


def state_version(resources: Iterable[Resource]) -> str:
    """A SotW `version_info`: a hash of the (name, version) pairs Envoy will hold after the response."""
    digest = hashlib.sha256()
    for resource in sorted(resources, key=lambda r: r.name):
        digest.update(resource.name.encode())
        digest.update(b"\x00")
        digest.update(resource.version.encode())
        digest.update(b"\x00")
    return digest.hexdigest()[:16]


class ResponseEncoder:
    """Not thread-safe: one per server, used from its event loop."""

    def __init__(self, capacity: int = 256) -> None:
        self._capacity = capacity
        self._bodies: OrderedDict[tuple[object, ...], bytes] = OrderedDict()

    def sotw(self, type_url: str, version_info: str, resources: Sequence[Resource], nonce: str) -> bytes:
        key = ("sotw", type_url, version_info, *((r.name, r.version) for r in resources))
        body = self._bodies.get(key)
        if body is None:
            header = discovery_pb2.DiscoveryResponse(version_info=version_info, type_url=type_url)
            body = self._remember(key, header.SerializeToString() + b"".join(r.sotw_field for r in resources))
        else:
            self._bodies.move_to_end(key)
        return body + wire.string_field(_SOTW_NONCE, nonce)

    def delta(self, type_url: str, system_version: str, resources: Sequence[Resource], removed: Sequence[str],
              nonce: str) -> bytes:
        key = ("delta", type_url, system_version, tuple(removed), *((r.name, r.version) for r in resources))
        body = self._bodies.get(key)
        if body is None:
            header = discovery_pb2.DeltaDiscoveryResponse(system_version_info=system_version, type_url=type_url,
                                                          removed_resources=list(removed))
            body = self._remember(key, header.SerializeToString() + b"".join(r.delta_field for r in resources))
        else:
            self._bodies.move_to_end(key)
        return body + wire.string_field(_DELTA_NONCE, nonce)

    def _remember(self, key: tuple[object, ...], body: bytes) -> bytes:
        self._bodies[key] = body
        if len(self._bodies) > self._capacity:
            self._bodies.popitem(last=False)
        return body
