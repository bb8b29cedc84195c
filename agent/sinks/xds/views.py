"""Snapshot + config + node view -> the resources that node is served, each serialized once.

Reuses the file sink's builders (`build_resources`) with ADS as the EDS and RDS source, so a
sidecar fed over ADS routes exactly like one fed by files; gateway nodes get the gateway listener
instead of the per-service ones.

Endpoints of a service that has not synced yet are *withheld* rather than served empty: an Envoy
that already has them (e.g. after the control plane restarted) keeps serving them, and a new Envoy
waits for real data (its initial fetch timeout) instead of being told "no endpoints".
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol, cast

from envoy.config.core.v3 import config_source_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2

from agent.config import DataPlaneConfig, ServicePolicy, TrafficSplit
from agent.envoy.ads_bootstrap import ADS_SOURCE
from agent.envoy.auth import watched_files
from agent.envoy.clusters import EndpointWeights, build_load_assignment
from agent.envoy.gateway import GatewayTarget, gateway_listener, gateway_routes
from agent.envoy.listeners import Backend
from agent.envoy.nodes import NodeView
from agent.envoy.resources import (
    EnvoyResources,
    build_resources,
    policies,
    policy_resources,
    protocol_of,
    split_resources,
)
from agent.model import ServiceSnapshot, Snapshot
from agent.sinks.xds.refs import listener_refs, route_clusters
from agent.sinks.xds.resource import BuiltIndex, Resource, ResourcePool
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
    built: BuiltIndex = field(default_factory=dict, repr=False)  # the memo of per-service builds (ResourcePool)

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

    Each service is built on its own and memoized in `pool` by what it is built from (its endpoints, its
    policy, its weights, the config around it): a publish that changes one service builds and encodes
    that service only. Splits and the gateway listener span services and are built every time.
    `transform` edits the typed messages before they are serialized (tests use it to break one); it
    builds everything, without the memo.
    """
    services, config = _select(snapshot, config, view)
    if transform is not None:
        built = build_resources(Snapshot(version=snapshot.version, services=MappingProxyType(services)), config,
                                ads_source, ADS_SOURCE, weights=weights)
        if view.role == "gateway":
            built = _as_gateway(built, services, config)
        return _to_view(transform(built), services, pool)
    gateway = view.role == "gateway"
    specs = policies(config)
    context = cast(DataPlaneConfig, pool.context(config.model_copy(update={"services": (), "splits": ()})))
    resources: list[Resource] = []
    for name in sorted(services):
        spec = specs.get(name)
        if spec is None:
            continue  # the config does not name it (yet): mid-reload the next publish brings it
        for resource in _service(pool, context, services[name], spec, (weights or {}).get(name)):
            if not (gateway and resource.type_url in (LDS, RDS)):
                resources.append(resource)
    if gateway:
        listeners, routes = _gateway(services, config)
    else:
        listeners, routes = split_resources(config, services, ADS_SOURCE)
    resources.extend(_listener(pool, listener) for listener in listeners)
    resources.extend(pool.make(RDS, route.name, route, route_clusters(route)) for route in routes)
    withheld = frozenset(name for name, svc in services.items() if not svc.synced)
    return _assemble(resources, withheld, pool)


def _service(pool: ResourcePool, context: DataPlaneConfig, service: ServiceSnapshot, spec: ServicePolicy,
             weights: Mapping[str, int] | None) -> tuple[Resource, ...]:
    """One service's resources, from the memo where nothing they depend on moved: its endpoints (and
    weights) make its load assignment; its policy, protocol and auth files (in the config around it) make
    its cluster, listener and routes. An endpoint or weight change re-encodes the load assignment only."""
    endpoints_key = f"eds/{service.name}"
    endpoints = pool.recall(endpoints_key, (service, weights))
    if endpoints is None:
        assignment = build_load_assignment(service, weights)
        endpoints = (pool.make(EDS, assignment.cluster_name, assignment),)
        pool.remember(endpoints_key, (service, weights), endpoints)
    protocol = protocol_of(spec, service)
    policy_key, inputs = f"policy/{service.name}", (spec, protocol, file_digests(spec))
    policy = pool.recall(policy_key, inputs, context)
    if policy is None:
        cluster, listener, route = policy_resources(spec, protocol, ads_source, ADS_SOURCE)
        policy = (pool.make(CDS, cluster.name, cluster),
                  *((_listener(pool, listener),) if listener is not None else ()),
                  *((pool.make(RDS, route.name, route, route_clusters(route)),) if route is not None else ()))
        pool.remember(policy_key, inputs, policy, context)
    return (*endpoints, *policy)


def file_digests(spec: ServicePolicy) -> tuple[tuple[str, str], ...]:
    """Digests of the files whose content goes into the service's resources (its API keys or JWKS): a
    rotated file changes what is served although the config did not change."""
    out = []
    for path in watched_files(spec.auth):
        try:
            out.append((str(path), hashlib.sha256(path.read_bytes()).hexdigest()))
        except OSError as exc:  # building reports it (ConfigError); here it is only "not the same as before"
            out.append((str(path), f"unreadable: {exc.errno}"))
    return tuple(out)


def config_file_digests(config: DataPlaneConfig) -> tuple[tuple[tuple[str, str], ...], ...]:
    return tuple(file_digests(spec) for spec in config.services if spec.auth is not None)


def _listener(pool: ResourcePool, listener: listener_pb2.Listener) -> Resource:
    clusters, routes = listener_refs(listener)
    return pool.make(LDS, listener.name, listener, clusters, routes)


def _to_view(built: EnvoyResources, services: Mapping[str, ServiceSnapshot], pool: ResourcePool) -> ViewResources:
    resources = [*(pool.make(CDS, c.name, c) for c in built.clusters),
                 *(pool.make(EDS, a.cluster_name, a) for a in built.load_assignments),
                 *(_listener(pool, listener) for listener in built.listeners),
                 *(pool.make(RDS, r.name, r, route_clusters(r)) for r in built.routes)]
    return _assemble(resources, frozenset(name for name, svc in services.items() if not svc.synced), pool)


def _assemble(resources: list[Resource], withheld: frozenset[str], pool: ResourcePool) -> ViewResources:
    by_type: dict[str, dict[str, Resource]] = {t: {} for t in ORDER}
    for resource in sorted(resources, key=lambda r: r.name):
        if not (resource.type_url == EDS and resource.name in withheld):
            by_type[resource.type_url][resource.name] = resource
    return ViewResources(resources=MappingProxyType({t: MappingProxyType(r) for t, r in by_type.items()}),
                         withheld=withheld, index=pool.made, built=pool.built,
                         signatures={t: tuple((n, r.version) for n, r in r_.items())
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
    listeners, routes = _gateway(services, config)
    return EnvoyResources(clusters=built.clusters, load_assignments=built.load_assignments,
                          listeners=tuple(listeners), routes=tuple(routes))


def _gateway(services: Mapping[str, ServiceSnapshot],
             config: DataPlaneConfig) -> tuple[list[listener_pb2.Listener], list[route_pb2.RouteConfiguration]]:
    """The shared gateway listener and its routes: a virtual host per service and per split."""
    specs = policies(config)
    targets = [GatewayTarget(name, name, specs[name]) for name, svc in services.items()
               if name in specs and protocol_of(specs[name], svc) != "tcp"]
    targets.extend(t for t in (_split_target(s, services, specs) for s in config.splits) if t is not None)
    targets.sort(key=lambda t: t.name)
    return [gateway_listener(config.gateway, targets, ADS_SOURCE)], [gateway_routes(config.gateway, targets)]


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
