"""Snapshot + config -> the Envoy resources that describe it, as typed messages.

The snapshot says which services exist and where their endpoints are; each service's Envoy policy
(listener, LB, retries, timeouts, TLS, auth) is its `ServicePolicy` in the config, joined by name.

Free of any file concern, so an xDS (ADS) server can serve the same bundle: only the `EdsSource`
(where a cluster's endpoints come from) differs between the two modes, plus, over ADS, an RDS
config source that moves each HTTP listener's routes into a separate `RouteConfiguration`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2

from agent.config import DataPlaneConfig, ServicePolicy, TrafficSplit
from agent.envoy.clusters import EdsSource, EndpointWeights, build_cluster, build_load_assignment
from agent.envoy.listeners import Backend, Target, build_listener, route_configuration, service_listener
from agent.model import Schema, ServiceSnapshot, Snapshot, effective_protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnvoyResources:
    """Everything Envoy needs, each tuple sorted by resource name. Treat the messages as read-only."""

    clusters: tuple[cluster_pb2.Cluster, ...]
    load_assignments: tuple[endpoint_pb2.ClusterLoadAssignment, ...]
    listeners: tuple[listener_pb2.Listener, ...]
    # Only with an RDS source: one per HTTP listener, named like it. Empty in file mode (routes inline).
    routes: tuple[route_pb2.RouteConfiguration, ...] = ()

    @property
    def cluster_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.clusters)

    @property
    def listener_names(self) -> tuple[str, ...]:
        return tuple(lst.name for lst in self.listeners)


def build_resources(snapshot: Snapshot, config: DataPlaneConfig, eds_source: EdsSource,
                    rds_source: config_source_pb2.ConfigSource | None = None,
                    weights: EndpointWeights | None = None) -> EnvoyResources:
    """`weights` (service -> endpoint address -> weight, from agent.adaptive) only touches EDS."""
    specs = policies(config)
    # A service the config does not name (yet) is left out: mid-reload the next publish brings it.
    services = sorted((s for s in snapshot.services.values() if s.name in specs), key=lambda s: s.name)
    assignments = [build_load_assignment(svc, (weights or {}).get(svc.name)) for svc in services]
    clusters: list[cluster_pb2.Cluster] = []
    listeners: list[listener_pb2.Listener] = []
    routes: list[route_pb2.RouteConfiguration] = []
    for svc in services:
        spec = specs[svc.name]
        cluster, listener, route = policy_resources(spec, protocol_of(spec, svc), eds_source, rds_source)
        clusters.append(cluster)
        listeners.extend([listener] if listener is not None else [])
        routes.extend([route] if route is not None else [])
    split_listeners, split_routes = split_resources(config, {svc.name: svc for svc in services}, rds_source)
    return EnvoyResources(
        clusters=tuple(clusters),
        load_assignments=tuple(assignments),
        listeners=tuple(sorted((*listeners, *split_listeners), key=lambda lst: lst.name)),
        routes=tuple(sorted((*routes, *split_routes), key=lambda route: route.name)),
    )


def policy_resources(spec: ServicePolicy, protocol: Schema, eds_source: EdsSource,
                     rds_source: config_source_pb2.ConfigSource | None = None,
                     ) -> tuple[cluster_pb2.Cluster, listener_pb2.Listener | None, route_pb2.RouteConfiguration | None]:
    """What a service's policy makes, given its protocol: its cluster and, if it has a port, its listener
    (and, with an RDS source, its routes). Its endpoints are `build_load_assignment`'s."""
    cluster = build_cluster(spec, protocol, eds_source)
    if spec.listen_port is None:
        return cluster, None, None
    listener = service_listener(spec, protocol, rds_source)
    route = route_configuration(spec.name, spec.name, spec) if rds_source is not None and protocol != "tcp" else None
    return cluster, listener, route


def split_resources(config: DataPlaneConfig, services: Mapping[str, ServiceSnapshot],
                    rds_source: config_source_pb2.ConfigSource | None = None,
                    ) -> tuple[list[listener_pb2.Listener], list[route_pb2.RouteConfiguration]]:
    """The split listeners of `config` over `services` (and, with an RDS source, their routes).

    Apart from `build_resources` so that the xDS views, which build each service on its own (and only
    when it changed), can build what spans services separately."""
    specs = policies(config)
    by_name = {name: svc for name, svc in services.items() if name in specs}
    listeners: list[listener_pb2.Listener] = []
    routes: list[route_pb2.RouteConfiguration] = []
    for split in config.splits:
        built = _split_listener(split, by_name, specs, rds_source)
        if built is not None:
            listeners.append(built[0])
            if built[1] is not None:
                routes.append(built[1])
    return listeners, routes


def policies(config: DataPlaneConfig) -> dict[str, ServicePolicy]:
    """Each service's Envoy policy, by name (the join key with the snapshot)."""
    return {spec.name: spec for spec in config.services}


def protocol_of(spec: ServicePolicy, service: ServiceSnapshot) -> Schema:
    """The protocol Envoy speaks to this service: `agent.model.effective_protocol`, the one rule."""
    return effective_protocol(spec.protocol, service.endpoints)


def _split_listener(split: TrafficSplit, services: dict[str, ServiceSnapshot], specs: dict[str, ServicePolicy],
                    rds_source: config_source_pb2.ConfigSource | None = None,
                    ) -> tuple[listener_pb2.Listener, route_pb2.RouteConfiguration | None] | None:
    """Weighted clusters over the named services; retries, timeouts and protocol follow the first backend.

    Backends that are not in the snapshot (e.g. mid-reload) or have weight 0 are left out, so the
    listener never names a cluster Envoy does not have.
    """
    backends = [Backend(b.service, b.weight) for b in split.backends if b.weight > 0 and b.service in services]
    missing = [b.service for b in split.backends if b.service not in services]
    if missing:
        log.warning("split names services that are not in the snapshot; leaving them out",
                    extra={"split": split.name, "missing": missing})
    if not backends:
        return None
    primary = specs[backends[0].cluster]
    protocol = protocol_of(primary, services[backends[0].cluster])
    listener = build_listener(split.name, split.listen_address, split.listen_port, backends, primary,
                              protocol, rds_source)
    target: Target = backends
    routes = route_configuration(split.name, target, primary) \
        if rds_source is not None and protocol != "tcp" else None
    return listener, routes
