"""Incremental ADS (DeltaAggregatedResources).

- Subscriptions change by `resource_names_subscribe` / `_unsubscribe`; a first CDS/LDS request
  that names nothing (or "*") is a wildcard subscription.
- `initial_resource_versions` of a reconnecting Envoy seed what it has: with content-hash versions,
  a control plane that restarted sends only what changed while it was down.
- Responses carry changed resources and `removed_resources`; endpoints withheld because a service
  has not synced are never reported as removed.
"""

from __future__ import annotations

from envoy.service.discovery.v3 import discovery_pb2

from agent.sinks.xds.resource import Resource, placeholder
from agent.sinks.xds.session import Session, changed_resources
from agent.sinks.xds.state import Sent, TypeState
from agent.sinks.xds.types import FULL_STATE
from agent.sinks.xds.views import ViewResources


class DeltaSession(Session):
    api = "delta"

    def receive(self, request: discovery_pb2.DeltaDiscoveryRequest) -> None:
        self._identify(request.node)
        state = self._state(request.type_url)
        if state is None:
            return
        if request.response_nonce:
            self._settle(state, request.response_nonce,
                         request.error_detail if request.HasField("error_detail") else None)
        subscribe = set(request.resource_names_subscribe)
        if not state.subscribed:
            state.subscribed = True
            state.wildcard = state.type_url in FULL_STATE and not subscribe
            self._seed(state, dict(request.initial_resource_versions))
        state.subscribe(subscribe)
        state.unsubscribe(set(request.resource_names_unsubscribe))

    def _seed(self, state: TypeState, versions: dict[str, str]) -> None:
        """What a reconnecting Envoy already has: the current resource if the version matches."""
        current = self._cache.current
        served = current.view(self.view).of(state.type_url) if current is not None and self.view else {}
        for name, version in versions.items():
            resource = served.get(name)
            held = resource if resource is not None and resource.version == version else \
                placeholder(state.type_url, name, version)
            state.known[name] = state.acked[name] = held

    def _respond(self, state: TypeState, desired: dict[str, Resource], view: ViewResources,
                 cache_version: int) -> bytes | None:
        changed = changed_resources(desired, state.known)
        removed = sorted(name for name in state.known if name not in desired and name not in view.withheld)
        if not changed and not removed and (state.answered or state.type_url not in FULL_STATE):
            return None
        nonce = self._next_nonce()
        body = self._encoder.delta(state.type_url, str(cache_version), changed, removed, nonce)
        state.record(nonce, Sent(resources={r.name: r for r in changed}, removed=frozenset(removed), full=False,
                                 cache_version=cache_version))
        return body
