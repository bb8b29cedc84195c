"""What one ADS stream knows about one resource type: subscription, what Envoy has, what is in flight.

`known` is optimistic (everything sent, as if accepted): it decides what still needs sending, and
a rejected resource is not re-sent until its content changes. `acked` is what Envoy confirmed: it
decides when it is safe to send a listener that routes to a new cluster, and which leaving
clusters Envoy may still route to.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.sinks.xds.resource import Resource
from agent.sinks.xds.types import WILDCARD


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
        self.wildcard = False
        self.names: set[str] = set()
        self.known: dict[str, Resource] = {}
        self.acked: dict[str, Resource] = {}
        self.inflight: dict[str, Sent] = {}  # nonce -> response, oldest first
        self.nonce = ""  # the latest nonce sent

    def wants(self, name: str) -> bool:
        return self.wildcard or name in self.names

    def subscribe(self, names: set[str]) -> None:
        self.wildcard = self.wildcard or WILDCARD in names
        self.names |= names - {WILDCARD}

    def unsubscribe(self, names: set[str]) -> None:
        if WILDCARD in names:
            self.wildcard = False
        self.names -= names
        self.forget_unwanted()

    def forget_unwanted(self) -> None:
        # Envoy drops what it no longer subscribes to; resubscribing must resend it.
        for table in (self.known, self.acked):
            for name in [n for n in table if not self.wants(n)]:
                del table[name]

    def record(self, nonce: str, sent: Sent) -> None:
        self.nonce = nonce
        self.answered = True
        self.inflight[nonce] = sent
        if sent.full:
            self.known = dict(sent.resources)
        else:
            self.known.update(sent.resources)
            for name in sent.removed:
                self.known.pop(name, None)

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
            self.acked = dict(sent.resources)
        else:
            self.acked.update(sent.resources)
            for name in sent.removed:
                self.acked.pop(name, None)
