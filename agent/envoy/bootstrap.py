"""The Envoy bootstrap for file mode: node identity, a loopback-only admin, CDS and LDS from files."""

from __future__ import annotations

import ipaddress

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.overload.v3 import overload_pb2
from envoy.extensions.resource_monitors.downstream_connections.v3 import downstream_connections_pb2

from agent.config import EnvoyConfig
from agent.envoy.clusters import socket_address
from agent.envoy.layout import FileLayout
from agent.envoy.serialize import pack
from agent.envoy.stats import stats_resources
from agent.errors import ConfigError

# Envoy warns at start-up when nothing bounds downstream connections; this bound is far above what a
# sidecar sees, and keeps a connection flood from exhausting file descriptors.
MAX_DOWNSTREAM_CONNECTIONS = 50_000


def ensure_loopback(address: str) -> None:
    """Envoy's admin API can change and stop the proxy without any authentication: never expose it."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise ConfigError(f"envoy.admin_address must be a loopback IP address such as 127.0.0.1, "
                          f"got {address!r}") from None
    if not ip.is_loopback:
        raise ConfigError(f"envoy.admin_address {address} is not a loopback address: Envoy's admin API is "
                          f"unauthenticated and must listen on 127.0.0.0/8 or ::1 only")


def build_bootstrap(envoy: EnvoyConfig) -> bootstrap_pb2.Bootstrap:
    ensure_loopback(envoy.admin_address)
    layout = FileLayout.for_config(envoy)
    bootstrap = bootstrap_pb2.Bootstrap(
        node=base_pb2.Node(id=envoy.node_id, cluster=envoy.cluster),
        admin=bootstrap_pb2.Admin(address=socket_address(envoy.admin_address, envoy.admin_port)),
        dynamic_resources=bootstrap_pb2.Bootstrap.DynamicResources(
            cds_config=layout.cds_source(),
            lds_config=layout.lds_source(),
        ),
        overload_manager=overload_manager(),
    )
    if envoy.stats_port is not None:
        listener, cluster = stats_resources(envoy.stats_address, envoy.stats_port, envoy.admin_address,
                                            envoy.admin_port)
        bootstrap.static_resources.listeners.append(listener)
        bootstrap.static_resources.clusters.append(cluster)
    return bootstrap


def overload_manager() -> overload_pb2.OverloadManager:
    """A bound on downstream connections (shared with the ADS bootstrap)."""
    return overload_pb2.OverloadManager(resource_monitors=[overload_pb2.ResourceMonitor(
        name="envoy.resource_monitors.global_downstream_max_connections",
        typed_config=pack(downstream_connections_pb2.DownstreamConnectionsConfig(
            max_active_downstream_connections=MAX_DOWNSTREAM_CONNECTIONS)),
    )])
