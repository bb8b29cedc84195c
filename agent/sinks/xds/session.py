"""One ADS stream's protocol state, independent of gRPC: requests in, response bytes out.

`SotwSession` and `DeltaSession` share this base: the node's view, per-type state, ACK/NACK
bookkeeping, and a pass over the types in ADS order (CDS, EDS, LDS, RDS) after every request and
every cache change, sending whatever Envoy is missing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from envoy.config.core.v3 import base_pb2
from google.rpc import status_pb2

from agent.envoy.nodes import NodeView, node_view
from agent.sinks.xds.cache import XdsCache
from agent.sinks.xds.encode import ResponseEncoder
from agent.sinks.xds.metrics import NACKS, PUSHED
from agent.sinks.xds.plan import Planner
from agent.sinks.xds.resource import Resource
from agent.sinks.xds.state import Sent, TypeState
from agent.sinks.xds.types import CDS, EDS, LDS, ORDER, RDS, short
from agent.sinks.xds.views import ViewResources

log = logging.getLogger(__name__)

# (type URL, cache version of the response Envoy acknowledged): for tests, benchmarks and monitoring.
AckListener = Callable[[str, int], None]


class Session:
    api = ""

    def __init__(self, cache: XdsCache, encoder: ResponseEncoder, on_ack: AckListener | None = None,
                 peer: str = "") -> None:
        self._cache = cache
        self._encoder = encoder
        self._on_ack = on_ack
        self.peer = peer
        self.node_id = ""
        self.view: NodeView | None = None
        self.states = {type_url: TypeState(type_url) for type_url in ORDER}
        self._settled: dict[str, tuple[object, ...]] = {}  # type -> inputs of its last idle pass
        self._quiet: tuple[object, ...] | None = None  # `_pass_key` after the last pass that left nothing to send
        self._unknown_types: set[str] = set()

    # -- requests ------------------------------------------------------------------------------------

    def receive(self, request: Any) -> None:
        raise NotImplementedError

    def _identify(self, node: base_pb2.Node) -> None:
        if self.view is not None:
            return
        self.node_id = node.id
        self.view = node_view(node)
        self._cache.acquire(self.view)
        log.info("xDS stream opened", extra={"node": node.id, "api": self.api, "peer": self.peer,
                                             "view": str(self.view)})

    def _state(self, type_url: str) -> TypeState | None:
        state = self.states.get(type_url)
        if state is None and type_url not in self._unknown_types:
            self._unknown_types.add(type_url)
            log.info("not serving xDS type %s", type_url, extra={"node": self.node_id})
        return state

    def _settle(self, state: TypeState, nonce: str, error: status_pb2.Status | None) -> None:
        sent = state.settle(nonce, accepted=error is None)
        if sent is None:
            return
        if error is not None:
            NACKS.labels(state.type_url).inc()
            log.warning("Envoy rejected an xDS update (NACK) and keeps its last accepted %s: %s",
                        short(state.type_url), error.message,
                        extra={"node": self.node_id, "type_url": state.type_url, "nonce": nonce,
                               "error_code": error.code, "resources": sorted(sent.resources)})
        elif self._on_ack is not None:
            self._on_ack(state.type_url, sent.cache_version)

    # -- responses -----------------------------------------------------------------------------------

    def responses(self) -> list[bytes]:
        """One pass over the types in ADS order: the responses this stream must send now."""
        current = self._cache.current
        if self.view is None or current is None:
            return []
        # After a pass that left nothing to send, the next one is needed only once an input moved. The usual
        # request is the ACK of the EDS response a push sent, on every stream at every push: it moves none.
        key = self._pass_key(current.version)
        if key == self._quiet:
            return []
        try:
            view = current.view(self.view)
        except Exception:
            log.exception("cannot build the xDS view of this node; it keeps its current config",
                          extra={"node": self.node_id})
            return []
        planner = Planner(view, self.states)
        out: list[bytes] = []
        sent: list[str] = []
        for type_url in ORDER:
            state = self.states[type_url]
            if not state.subscribed:
                continue
            inputs = self._inputs(type_url, view)
            if self._settled.get(type_url) == inputs:
                continue  # nothing this type depends on moved since it last had nothing to send
            if type_url == EDS:
                result = self._respond_shared(state, planner, view, current.version)
            else:
                result = self._respond(state, planner.desired(type_url), view, current.version)
            if result is None:
                self._settled[type_url] = inputs
                continue
            body, changed = result
            out.append(body)
            sent.append(type_url)
            PUSHED[type_url].inc()
            self._invalidate(type_url, changed)
            # Envoy now holds what was desired: until an input moves, there is nothing more to send.
            self._settled[type_url] = self._inputs(type_url, view)
        # The pass reached a state that the next pass would leave alone, unless what it sent moved an input of
        # a type it had already passed. It did not if it sent nothing, or only EDS: what an EDS response moves
        # (`changes` of EDS) is read by EDS, LDS and RDS, never by CDS, the one type before it.
        self._quiet = self._pass_key(current.version) if all(t == EDS for t in sent) else None
        return out

    def _pass_key(self, cache_version: int) -> tuple[object, ...]:
        """Everything any type's `_inputs` reads, besides the view (fixed by the cache version), and each
        type's subscription flag: equal keys, equal passes. `ack_changes` of EDS is left out because no
        input reads it (what Envoy acknowledged of EDS gates nothing), and its ACK is the common request."""
        states = self.states
        cds, eds, lds, rds = states[CDS], states[EDS], states[LDS], states[RDS]
        return (cache_version, cds.subscribed, cds.changes, cds.ack_changes, eds.subscribed, eds.changes,
                lds.subscribed, lds.changes, lds.ack_changes, rds.subscribed, rds.changes, rds.ack_changes)

    def _inputs(self, type_url: str, view: ViewResources) -> tuple[object, ...]:
        """Everything `Planner.desired(type_url)` and `_respond` read (see plan.py)."""
        states = self.states
        if type_url == CDS:
            cds, lds, rds = states[CDS], states[LDS], states[RDS]
            return (view.signature(CDS), cds.changes, cds.ack_changes, lds.changes, lds.ack_changes, rds.changes,
                    rds.ack_changes)
        if type_url == EDS:
            return view.signature(EDS), view.signature(CDS), view.withheld, states[EDS].changes
        return (view.signature(type_url), view.withheld, states[type_url].changes, states[CDS].ack_changes,
                states[EDS].changes)

    def _respond(self, state: TypeState, desired: dict[str, Resource], view: ViewResources,
                 cache_version: int) -> tuple[bytes, list[Resource]] | None:
        """The response to send for this type, with the resources it (re)sends; None if nothing."""
        raise NotImplementedError

    def _respond_shared(self, state: TypeState, planner: Planner, view: ViewResources,
                        cache_version: int) -> tuple[bytes, list[Resource]] | None:
        """`_respond` for EDS, worked out once per cache version for all streams in the same state.

        EDS is what every endpoint change pushes to every stream, and what it sends depends only on
        the view and on the EDS state (subscription, what Envoy holds: `names_key`, `known_key`), not
        on the other types. Streams of one view in equal states get the same response, so the first
        one's answer (the bytes, and the record of what was sent) is replayed for the others.
        """
        memo = self._encoder.shared(cache_version)
        key = (self.api, id(view), state.wildcard, state.names_key, state.known_key)
        hit = memo.get(key)
        if hit is not None and hit[0] is view:  # the view itself pins its id while the entry lives
            answer: _Answer | None = hit[1]
            if answer is None:
                return None
            state.record(answer.nonce, answer.sent, answer.known_key)
            return answer.body, answer.changed
        result = self._respond(state, planner.desired(EDS), view, cache_version)
        if result is not None:
            answer = _Answer(result[0], result[1], state.nonce, state.inflight[state.nonce], state.known_key)
        else:
            answer = None
        memo[key] = (view, answer)
        return result

    def _invalidate(self, type_url: str, changed: list[Resource]) -> None:
        """A changed cluster is re-warmed by Envoy and needs its endpoints again (likewise a changed
        listener its routes): forget them, so this pass re-sends them right after."""
        if type_url == CDS:
            for resource in changed:
                self.states[EDS].forget(resource.name)
        elif type_url == LDS:
            for resource in changed:
                for route in resource.routes:
                    self.states[RDS].forget(route)

    def close(self) -> None:
        if self.view is not None:
            self._cache.release(self.view)
            log.info("xDS stream closed", extra={"node": self.node_id, "api": self.api, "peer": self.peer})


@dataclass(frozen=True)
class _Answer:
    """One EDS response as `_respond` made and recorded it (shared read-only by the streams replaying it)."""

    body: bytes
    changed: list[Resource]
    nonce: str
    sent: Sent
    known_key: str


def changed_resources(desired: Mapping[str, Resource], known: Mapping[str, Resource]) -> list[Resource]:
    """Resources in `desired` whose version Envoy does not have, sorted by name."""
    out = []
    for name in sorted(desired):
        resource = desired[name]
        held = known.get(name)
        if held is None or held.version != resource.version:
            out.append(resource)
    return out
