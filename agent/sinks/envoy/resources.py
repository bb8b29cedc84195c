"""Snapshot + config -> the Envoy resources that describe it, as typed messages.

Free of any file concern, so an xDS (ADS) server can serve the same bundle: only the `EdsSource`
(where a cluster's endpoints come from) differs between the two modes.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2

from agent.config import AgentConfig, TrafficSplit
from agent.model import SCHEMAS, Schema, ServiceSnapshot, Snapshot
from agent.sinks.envoy.clusters import EdsSource, build_cluster, build_load_assignment
from agent.sinks.envoy.listeners import Backend, build_listener, service_listener

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnvoyResources:
    """Everything Envoy needs, each tuple sorted by resource name. Treat the messages as read-only."""

    clusters: tuple[cluster_pb2.Cluster, ...]
    load_assignments: tuple[endpoint_pb2.ClusterLoadAssignment, ...]
    listeners: tuple[listener_pb2.Listener, ...]

    @property
    def cluster_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.clusters)

    @property
    def listener_names(self) -> tuple[str, ...]:
        return tuple(lst.name for lst in self.listeners)


def effective_protocol(service: ServiceSnapshot) -> Schema:
    """The configured protocol, or for "auto" the endpoints' schema (the most common one; http if none)."""
    protocol = service.spec.protocol
    if protocol != "auto":
        return protocol
    counts = Counter(e.schema for e in service.endpoints)
    if not counts:
        return "http"
    # Ties break by the fixed SCHEMAS order, so the result never depends on endpoint order.
    return max(SCHEMAS, key=lambda schema: (counts[schema], -SCHEMAS.index(schema)))


def build_resources(snapshot: Snapshot, config: AgentConfig, eds_source: EdsSource) -> EnvoyResources:
    services = sorted(snapshot.services.values(), key=lambda s: s.name)
    clusters = [build_cluster(svc, effective_protocol(svc), eds_source) for svc in services]
    assignments = [build_load_assignment(svc) for svc in services]
    listeners = [service_listener(svc.spec, effective_protocol(svc)) for svc in services
                 if svc.spec.listen_port is not None]
    by_name = {svc.name: svc for svc in services}
    for split in config.splits:
        listener = _split_listener(split, by_name)
        if listener is not None:
            listeners.append(listener)
    return EnvoyResources(
        clusters=tuple(clusters),
        load_assignments=tuple(assignments),
        listeners=tuple(sorted(listeners, key=lambda lst: lst.name)),
    )


def _split_listener(split: TrafficSplit, services: dict[str, ServiceSnapshot]) -> listener_pb2.Listener | None:
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
    primary = services[backends[0].cluster]
    return build_listener(split.name, split.listen_address, split.listen_port, backends, primary.spec,
                          effective_protocol(primary))
