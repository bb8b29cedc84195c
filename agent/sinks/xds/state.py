"""What one ADS stream knows about one resource type: subscription, what Envoy has, what is in flight.

`known` is optimistic (everything sent, as if accepted): it decides what still needs sending, and
a rejected resource is not re-sent until its content changes. `acked` is what Envoy confirmed: it
decides when it is safe to send a listener that routes to a new cluster, and which leaving
clusters Envoy may still route to.

Every change goes through a method that bumps `changes` (subscription or `known`) or
`ack_changes` (`acked`): the session skips recomputing a type whose inputs did not move.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Set
from dataclasses import dataclass

from agent.sinks.xds.resource import Resource
from agent.sinks.xds.types import WILDCARD

MAX_INFLIGHT = 32  # unanswered responses remembered per type (Envoy answers each within milliseconds)


@dataclass(frozen=True)
class Sent:
    """One response: what it carried and which cache version produced it."""

    resources: dict[str, Resource]
    removed: frozenset[str]
    full: bool  # a state-of-the-world CDS/LDS response: the complete set, replacing what came before
    cache_version: int


class TypeState:
    def __init__(self, type_url: str) -> None:
        self.type_url = type_url
        self.subscribed = False  # Envoy has asked for this type on this stream
        self.answered = False  # at least one response was sent (Envoy waits for one to initialise)
        self.nonce = ""  # the latest nonce sent
        self.inflight: dict[str, Sent] = {}  # nonce -> response, oldest first
        self.changes = 0
        self.ack_changes = 0
        self._wildcard = False
        self._names: set[str] = set()
        self._known: dict[str, Resource] = {}
        self._acked: dict[str, Resource] = {}
        # Tokens of the subscription and of `known` (None: recompute): streams in equal states have equal
        # tokens, so the session can reuse one stream's answer for all of them (see Session.responses).
        self._names_key: frozenset[str] | None = None
        self._known_key: str | None = None

    # -- reading ---------------------------------------------------------------------------------------

    @property
    def wildcard(self) -> bool:
        return self._wildcard

    @property
    def names(self) -> Set[str]:
        return self._names

    @property
    def known(self) -> Mapping[str, Resource]:
        return self._known

    @property
    def acked(self) -> Mapping[str, Resource]:
        return self._acked

    def wants(self, name: str) -> bool:
        return self._wildcard or name in self._names

    @property
    def names_key(self) -> frozenset[str]:
        if self._names_key is None:
            self._names_key = frozenset(self._names)
        return self._names_key

    @property
    def known_key(self) -> str:
        """A digest of `known`: (name, version, whether it is a version-only placeholder) of each."""
        if self._known_key is None:
            digest = hashlib.sha256()
            for name in sorted(self._known):
                resource = self._known[name]
                digest.update(f"{name}\x00{resource.version}\x00{int(bool(resource.body))}\x00".encode())
            self._known_key = digest.hexdigest()[:24]
        return self._known_key

    # -- subscription ------------------------------------------------------------------------------------

    def subscribe_only(self, wildcard: bool, names: set[str]) -> None:
        """State of the world: each request states the whole subscription."""
        if wildcard != self._wildcard or names != self._names:
            self._wildcard, self._names = wildcard, set(names) - {WILDCARD}
            self._names_key = None
            self.changes += 1
            self._forget_unwanted()

    def subscribe(self, names: set[str], wildcard: bool = False) -> None:
        wildcard = self._wildcard or wildcard or WILDCARD in names
        added = names - {WILDCARD} - self._names
        if wildcard != self._wildcard or added:
            self._wildcard = wildcard
            self._names |= added
            self._names_key = None
            self.changes += 1

    def unsubscribe(self, names: set[str]) -> None:
        if not names:
            return
        if WILDCARD in names:
            self._wildcard = False
        self._names -= names
        self._names_key = None
        self.changes += 1
        self._forget_unwanted()

    def _forget_unwanted(self) -> None:
        # Envoy drops what it no longer subscribes to; resubscribing must resend it.
        for table in (self._known, self._acked):
            for name in [n for n in table if not self.wants(n)]:
                del table[name]
        self._known_key = None

    # -- what Envoy has ----------------------------------------------------------------------------------

    def seed(self, held: Mapping[str, Resource]) -> None:
        """A reconnecting delta client's `initial_resource_versions`."""
        self._known.update(held)
        self._acked.update(held)
        self._known_key = None
        self.changes += 1
        self.ack_changes += 1

    def forget(self, name: str) -> None:
        """Make the next pass send `name` again (Envoy needs it again, e.g. to warm a changed cluster)."""
        if self._known.pop(name, None) is not None:
            self._known_key = None
            self.changes += 1

    def record(self, nonce: str, sent: Sent, known_key: str | None = None) -> None:
        """`known_key`: the token `known` has after this response, if the caller knows it already."""
        self.nonce = nonce
        self.answered = True
        self.inflight.pop(nonce, None)  # an identical response re-sent: it is now the newest
        self.inflight[nonce] = sent
        while len(self.inflight) > MAX_INFLIGHT:  # a client that never answers must not grow this
            del self.inflight[next(iter(self.inflight))]
        if sent.full:
            self._known = dict(sent.resources)
        else:
            self._known.update(sent.resources)
            for name in sent.removed:
                self._known.pop(name, None)
        self._known_key = known_key
        self.changes += 1

    def settle(self, nonce: str, accepted: bool) -> Sent | None:
        """Envoy answered `nonce`. Older responses still in flight are taken as accepted: Envoy
        handles responses in order and may fold several ACKs into its latest request."""
        if nonce not in self.inflight:
            return None
        while self.inflight:
            key = next(iter(self.inflight))
            sent = self.inflight.pop(key)
            if key != nonce or accepted:
                self._apply(sent)
            if key == nonce:
                return sent
        return None

    def _apply(self, sent: Sent) -> None:
        if sent.full:
            self._acked = dict(sent.resources)
        else:
            self._acked.update(sent.resources)
            for name in sent.removed:
                self._acked.pop(name, None)
        self.ack_changes += 1
