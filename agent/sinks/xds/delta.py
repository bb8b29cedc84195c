"""Incremental ADS (DeltaAggregatedResources).

- Subscriptions change by `resource_names_subscribe` / `_unsubscribe`; a first CDS/LDS request
  that names nothing (or "*") is a wildcard subscription.
- `initial_resource_versions` of a reconnecting Envoy seed what it has: with content-hash versions,
  a control plane that restarted sends only what changed while it was down.
- Responses carry changed resources and `removed_resources`; endpoints withheld because a service
  has not synced are never reported as removed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

from envoy.service.discovery.v3 import discovery_pb2

from agent.sinks.xds.resource import Resource, placeholder
from agent.sinks.xds.session import Session, changed_resources
from agent.sinks.xds.state import Sent, TypeState
from agent.sinks.xds.types import EDS, FULL_STATE
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
            state.subscribe(subscribe, wildcard=state.type_url in FULL_STATE and not subscribe)
            if request.initial_resource_versions:
                state.seed(self._held(state.type_url, dict(request.initial_resource_versions)))
        else:
            state.subscribe(subscribe)
        state.unsubscribe(set(request.resource_names_unsubscribe))

    def _held(self, type_url: str, versions: dict[str, str]) -> dict[str, Resource]:
        """What a reconnecting Envoy already has: the current resource where the version matches."""
        current = self._cache.current
        served: Mapping[str, Resource] = {}
        if current is not None and self.view is not None:
            with contextlib.suppress(Exception):  # a broken view is reported when responding
                served = current.view(self.view).of(type_url)
        held = {}
        for name, version in versions.items():
            resource = served.get(name)
            held[name] = resource if resource is not None and resource.version == version else \
                placeholder(type_url, name, version)
        return held

    def _respond(self, state: TypeState, desired: dict[str, Resource], view: ViewResources,
                 cache_version: int) -> tuple[bytes, list[Resource]] | None:
        changed = changed_resources(desired, state.known)
        # Withheld endpoints (service not synced yet) stay in Envoy: not a removal.
        kept = view.withheld if state.type_url == EDS else frozenset()
        removed = sorted(name for name in state.known if name not in desired and name not in kept)
        if not changed and not removed and (state.answered or state.type_url not in FULL_STATE):
            return None
        body, nonce = self._encoder.delta(state.type_url, str(cache_version), changed, removed)
        state.record(nonce, Sent(resources={r.name: r for r in changed}, removed=frozenset(removed), full=False,
                                 cache_version=cache_version))
        return body, changed
