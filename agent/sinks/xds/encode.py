"""Discovery responses as bytes, built from shared resource encodings and cached by content.

Streams in the same state get the same update after a snapshot change. The whole response is
encoded once and the very same bytes object is written to each of them: the nonce is part of the
cached bytes, named after the content (a response id), not after the stream. A nonce only has to
tell apart the responses of one stream, and two responses of one stream can only share a nonce if
they are byte-identical, in which case acknowledging either means the same thing.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2

from agent.sinks.xds.resource import Resource

Encoded = tuple[bytes, str]  # (the serialized response, its nonce)
SHARED_CAPACITY = 4096  # distinct stream states remembered per cache version (a bound, not a tuning knob)


def state_version(resources: Iterable[Resource]) -> str:
    """A SotW `version_info`: a hash of the (name, version) pairs Envoy will hold after the response."""
    return _hash_pairs(tuple(sorted((r.name, r.version) for r in resources)))


@functools.lru_cache(maxsize=1024)
def _hash_pairs(pairs: tuple[tuple[str, str], ...]) -> str:
    # Cached: every stream in the same state asks for the same version string.
    digest = hashlib.sha256()
    for name, version in pairs:
        digest.update(name.encode())
        digest.update(b"\x00")
        digest.update(version.encode())
        digest.update(b"\x00")
    return digest.hexdigest()[:16]


class ResponseEncoder:
    """Not thread-safe: one per server, used from its event loop."""

    def __init__(self, capacity: int = 256) -> None:
        self._capacity = capacity
        self._responses: OrderedDict[tuple[object, ...], Encoded] = OrderedDict()
        self._ids = itertools.count(1)
        self._shared: dict[tuple[object, ...], Any] = {}
        self._shared_version = -1

    def shared(self, cache_version: int) -> dict[tuple[object, ...], Any]:
        """A memo for the sessions' per-state answers, emptied when the cache version moves."""
        if cache_version != self._shared_version or len(self._shared) >= SHARED_CAPACITY:
            self._shared = {}
            self._shared_version = cache_version
        return self._shared

    def sotw(self, type_url: str, version_info: str, resources: Sequence[Resource]) -> Encoded:
        key = ("sotw", type_url, version_info, *((r.name, r.version) for r in resources))
        cached = self._lookup(key)
        if cached is not None:
            return cached
        nonce = self._nonce()
        header = discovery_pb2.DiscoveryResponse(version_info=version_info, type_url=type_url, nonce=nonce)
        return self._remember(key, header.SerializeToString() + b"".join(r.sotw_field for r in resources), nonce)

    def delta(self, type_url: str, system_version: str, resources: Sequence[Resource],
              removed: Sequence[str]) -> Encoded:
        key = ("delta", type_url, system_version, tuple(removed), *((r.name, r.version) for r in resources))
        cached = self._lookup(key)
        if cached is not None:
            return cached
        nonce = self._nonce()
        header = discovery_pb2.DeltaDiscoveryResponse(system_version_info=system_version, type_url=type_url,
                                                      removed_resources=list(removed), nonce=nonce)
        return self._remember(key, header.SerializeToString() + b"".join(r.delta_field for r in resources), nonce)

    def _nonce(self) -> str:
        return f"r{next(self._ids)}"

    def _lookup(self, key: tuple[object, ...]) -> Encoded | None:
        cached = self._responses.get(key)
        if cached is not None:
            self._responses.move_to_end(key)
        return cached

    def _remember(self, key: tuple[object, ...], body: bytes, nonce: str) -> Encoded:
        self._responses[key] = (body, nonce)
        if len(self._responses) > self._capacity:
            self._responses.popitem(last=False)
        return body, nonce
