"""What a stream should hold of each type right now, following the xDS ordering rules for ADS.

(The xDS spec's "eventual consistency" advice, as go-control-plane orders ADS pushes.)

- CDS first; EDS for a cluster after the cluster (the session re-sends a changed cluster's
  endpoints right after it, since Envoy warms the new cluster until it gets them).
- A listener (LDS) or route configuration (RDS) that sends traffic to a cluster is served only once
  Envoy has ACKed that cluster and has been sent its endpoints (or they are withheld because the
  service has not synced); until then the stream keeps the version it had, or leaves a new one out.
- A cluster that left the snapshot stays in CDS while any listener or route Envoy may still hold
  (acknowledged or in flight) sends traffic to it; it goes once those updates are ACKed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from agent.sinks.xds.resource import Resource
from agent.sinks.xds.state import TypeState
from agent.sinks.xds.types import CDS, EDS, LDS, RDS
from agent.sinks.xds.views import ViewResources


class Planner:
    def __init__(self, view: ViewResources, states: Mapping[str, TypeState]) -> None:
        self._view = view
        self._states = states

    def desired(self, type_url: str) -> dict[str, Resource]:
        if type_url == CDS:
            return self._clusters()
        if type_url == EDS:
            return self._endpoints()
        return self._gated(type_url)

    def _candidates(self, type_url: str) -> Iterable[str]:
        state = self._states[type_url]
        return self._view.of(type_url).keys() if state.wildcard else sorted(state.names)

    def _clusters(self) -> dict[str, Resource]:
        state = self._states[CDS]
        clusters = self._view.of(CDS)
        out = {name: clusters[name] for name in self._candidates(CDS) if name in clusters}
        for name in self._routed_to() - out.keys():
            leaving = state.acked.get(name) or state.known.get(name)
            if leaving is not None and leaving.body and state.wants(name):
                out[name] = leaving
        return out

    def _endpoints(self) -> dict[str, Resource]:
        state = self._states[EDS]
        assignments = self._view.of(EDS)
        clusters = self._view.of(CDS)
        out: dict[str, Resource] = {}
        for name in self._candidates(EDS):
            resource = assignments.get(name)
            if resource is None and name not in clusters:
                resource = state.known.get(name)  # a leaving cluster keeps its endpoints meanwhile
            if resource is not None and resource.body:
                out[name] = resource
        return out

    def _gated(self, type_url: str) -> dict[str, Resource]:
        state = self._states[type_url]
        current = self._view.of(type_url)
        out: dict[str, Resource] = {}
        for name in self._candidates(type_url):
            resource = current.get(name)
            if resource is not None and self.ready(resource):
                out[name] = resource
            elif name in state.known and (resource is not None or type_url == RDS):
                out[name] = state.known[name]  # not ready yet: keep what Envoy has
        return out

    def ready(self, resource: Resource) -> bool:
        """Every cluster it routes to is ACKed and has had its endpoints sent (or they are withheld)."""
        clusters = self._states[CDS].acked
        endpoints = self._states[EDS].known
        withheld = self._view.withheld
        return all(c in clusters and (c in endpoints or c in withheld) for c in resource.clusters)

    def _routed_to(self) -> set[str]:
        names: set[str] = set()
        for type_url in (LDS, RDS):
            state = self._states[type_url]
            for resource in (*state.acked.values(), *state.known.values()):
                names |= resource.clusters
        return names
