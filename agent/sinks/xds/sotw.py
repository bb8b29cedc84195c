"""State-of-the-world ADS (StreamAggregatedResources).

- A request whose nonce is not the latest one sent for its type is stale: its ACK/NACK is booked,
  but its subscription is ignored (Envoy asks again after the newer response), like go-control-plane.
- CDS and LDS responses carry the complete set; EDS and RDS responses only what changed (the xDS
  spec lets Envoy keep what a response leaves out), so an endpoint change in one service sends one
  ClusterLoadAssignment, not all of them.
- `version_info` hashes the (name, version) pairs Envoy will hold, so it survives restarts.
"""

from __future__ import annotations

from envoy.service.discovery.v3 import discovery_pb2

from agent.sinks.xds.encode import state_version
from agent.sinks.xds.resource import Resource
from agent.sinks.xds.session import Session, changed_resources
from agent.sinks.xds.state import Sent, TypeState
from agent.sinks.xds.types import FULL_STATE, WILDCARD
from agent.sinks.xds.views import ViewResources


class SotwSession(Session):
    api = "sotw"

    def receive(self, request: discovery_pb2.DiscoveryRequest) -> None:
        self._identify(request.node)
        state = self._state(request.type_url)
        if state is None:
            return
        nonce = request.response_nonce
        if nonce:
            if nonce != state.nonce and nonce not in state.inflight:
                return  # from before this stream's latest response, or unknown: ignore
            self._settle(state, nonce, request.error_detail if request.HasField("error_detail") else None)
            if nonce != state.nonce:
                return
        state.subscribed = True
        names = set(request.resource_names)
        state.subscribe_only(state.type_url in FULL_STATE and (not names or WILDCARD in names), names)

    def _respond(self, state: TypeState, desired: dict[str, Resource], view: ViewResources,
                 cache_version: int) -> tuple[bytes, list[Resource]] | None:
        full = state.type_url in FULL_STATE
        changed = changed_resources(desired, state.known)
        if full:
            if state.answered and not changed and desired.keys() == state.known.keys():
                return None
            resources = [desired[name] for name in sorted(desired)]
            version_info = state_version(resources)
            sent = Sent(resources=dict(desired), removed=frozenset(), full=True, cache_version=cache_version)
        else:
            if not changed:
                return None
            resources = changed
            version_info = state_version({**state.known, **{r.name: r for r in changed}}.values())
            sent = Sent(resources={r.name: r for r in changed}, removed=frozenset(), full=False,
                        cache_version=cache_version)
        body, nonce = self._encoder.sotw(state.type_url, version_info, resources)
        state.record(nonce, sent)
        return body, changed
