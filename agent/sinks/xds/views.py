"""Snapshot + config + node view -> the resources that node is served, each serialized once.

Reuses the file sink's builders (`build_resources`) with ADS as the EDS and RDS source, so a
sidecar fed over ADS routes exactly like one fed by files; gateway nodes get the gateway listener
instead of the per-service ones.

Endpoints of a service that has not synced yet are *withheld* rather than served empty: an Envoy
that already has them (e.g. after the control plane restarted) keeps serving them, and a new Envoy
waits for real data (its initial fetch timeout) instead of being told "no endpoints".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from envoy.config.core.v3 import config_source_pb2

from agent.config import DataPlaneConfig, ServicePolicy, TrafficSplit
from agent.envoy.ads_bootstrap import ADS_SOURCE
from agent.envoy.clusters import EndpointWeights
from agent.envoy.gateway import GatewayTarget, gateway_listener, gateway_routes
from agent.envoy.listeners import Backend
from agent.envoy.nodes import NodeView
from agent.envoy.resources import EnvoyResources, build_resources, policies, protocol_of
from agent.model import ServiceSnapshot, Snapshot
from agent.sinks.xds.refs import listener_refs, route_clusters
from agent.sinks.xds.resource import Resource, ResourcePool
from agent.sinks.xds.types import CDS, EDS, LDS, ORDER, RDS


def ads_source(_cluster: str) -> config_source_pb2.ConfigSource:
    return ADS_SOURCE


@dataclass(frozen=True)
class ViewResources:
    """What one node view is served: per type, resource name -> `Resource`."""

    resources: Mapping[str, Mapping[str, Resource]]
    withheld: frozenset[str] = frozenset()  # EDS names not served yet (service not synced)
    index: Mapping[tuple[str, str, str], Resource] = field(default_factory=dict, repr=False)
    # type -> ((name, version), ...): equal across snapshot versions when that type did not change
    signatures: Mapping[str, tuple[tuple[str, str], ...]] = field(default_factory=dict, repr=False)

    def of(self, type_url: str) -> Mapping[str, Resource]:
        return self.resources.get(type_url, _EMPTY)

    def signature(self, type_url: str) -> tuple[tuple[str, str], ...]:
        return self.signatures.get(type_url, ())


_EMPTY: Mapping[str, Resource] = MappingProxyType({})


class ViewBuilder(Protocol):
    def __call__(self, snapshot: Snapshot, config: DataPlaneConfig, view: NodeView, pool: ResourcePool,
                 weights: EndpointWeights | None = None) -> ViewResources: ...


def build_view(snapshot: Snapshot, config: DataPlaneConfig, view: NodeView, pool: ResourcePool,
               weights: EndpointWeights | None = None,
               transform: Callable[[EnvoyResources], EnvoyResources] | None = None) -> ViewResources:
    """`weights` (adaptive LB: service -> endpoint address -> weight) only changes EDS resources.

    `transform` edits the typed messages before they are serialized (tests use it to break one).
    """
    services, config = _select(snapshot, config, view)
    built = build_resources(Snapshot(version=snapshot.version, services=MappingProxyType(services)), config,
                            ads_source, ADS_SOURCE, weights=weights)
    if view.role == "gateway":
        built = _as_gateway(built, services, config)
    if transform is not None:
        built = transform(built)
    return _to_view(built, services, pool)


def _to_view(built: EnvoyResources, services: Mapping[str, ServiceSnapshot], pool: ResourcePool) -> ViewResources:
    withheld = frozenset(name for name, svc in services.items() if not svc.synced)
    by_type: dict[str, dict[str, Resource]] = {t: {} for t in ORDER}
    for cluster in built.clusters:
        by_type[CDS][cluster.name] = pool.make(CDS, cluster.name, cluster)
    for assignment in built.load_assignments:
        if assignment.cluster_name not in withheld:
            by_type[EDS][assignment.cluster_name] = pool.make(EDS, assignment.cluster_name, assignment)
    for listener in built.listeners:
        clusters, routes = listener_refs(listener)
        by_type[LDS][listener.name] = pool.make(LDS, listener.name, listener, clusters, routes)
    for route in built.routes:
        by_type[RDS][route.name] = pool.make(RDS, route.name, route, route_clusters(route))
    return ViewResources(resources=MappingProxyType({t: MappingProxyType(r) for t, r in by_type.items()}),
                         withheld=withheld, index=pool.made,
                         signatures={t: tuple(sorted((n, r.version) for n, r in r_.items()))
                                     for t, r_ in by_type.items()})


def _select(snapshot: Snapshot, config: DataPlaneConfig,
            view: NodeView) -> tuple[dict[str, ServiceSnapshot], DataPlaneConfig]:
    services = {name: svc for name, svc in snapshot.services.items() if view.selects(name)}
    # A split belongs to a view only if the node sees every service it spreads over.
    splits = tuple(s for s in config.splits if all(view.selects(b.service) for b in s.backends))
    address = view.listen_address
    update: dict[str, object] = {"splits": splits}
    if address is not None:
        update["services"] = tuple(s.model_copy(update={"listen_address": address}) for s in config.services)
        update["splits"] = tuple(s.model_copy(update={"listen_address": address}) for s in splits)
        update["gateway"] = config.gateway.model_copy(update={"listen_address": address})
    return services, config.model_copy(update=update)


def _as_gateway(built: EnvoyResources, services: Mapping[str, ServiceSnapshot],
                config: DataPlaneConfig) -> EnvoyResources:
    specs = policies(config)
    targets = [GatewayTarget(name, name, specs[name]) for name, svc in services.items()
               if name in specs and protocol_of(specs[name], svc) != "tcp"]
    targets.extend(t for t in (_split_target(s, services, specs) for s in config.splits) if t is not None)
    targets.sort(key=lambda t: t.name)
    return EnvoyResources(clusters=built.clusters, load_assignments=built.load_assignments,
                          listeners=(gateway_listener(config.gateway, targets, ADS_SOURCE),),
                          routes=(gateway_routes(config.gateway, targets),))


def _split_target(split: TrafficSplit, services: Mapping[str, ServiceSnapshot],
                  specs: Mapping[str, ServicePolicy]) -> GatewayTarget | None:
    backends = [Backend(b.service, b.weight) for b in split.backends
                if b.weight > 0 and b.service in services and b.service in specs]
    if not backends:
        return None
    primary = backends[0].cluster
    if protocol_of(specs[primary], services[primary]) == "tcp":
        return None
    return GatewayTarget(split.name, backends, specs[primary])
