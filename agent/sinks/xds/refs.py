"""Which clusters and route configurations a listener or route configuration refers to.

The stream planner needs this to send a listener or route only once the clusters it uses exist in
Envoy, and to keep a removed cluster until nothing in Envoy routes to it any more.
"""

from __future__ import annotations

from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2


def route_clusters(config: route_pb2.RouteConfiguration) -> frozenset[str]:
    names: set[str] = set()
    for vhost in config.virtual_hosts:
        for route in vhost.routes:
            if not route.HasField("route"):
                continue
            action = route.route
            if action.cluster:
                names.add(action.cluster)
            names.update(weighted.name for weighted in action.weighted_clusters.clusters)
    return frozenset(names)


def listener_refs(listener: listener_pb2.Listener) -> tuple[frozenset[str], frozenset[str]]:
    """(clusters, route configuration names) used by the listener's filter chains."""
    clusters: set[str] = set()
    routes: set[str] = set()
    chains = [*listener.filter_chains, *([listener.default_filter_chain]
                                         if listener.HasField("default_filter_chain") else [])]
    for chain in chains:
        for network_filter in chain.filters:
            config = network_filter.typed_config
            if config.Is(tcp_proxy_pb2.TcpProxy.DESCRIPTOR):
                proxy = tcp_proxy_pb2.TcpProxy()
                config.Unpack(proxy)
                if proxy.cluster:
                    clusters.add(proxy.cluster)
                clusters.update(weighted.name for weighted in proxy.weighted_clusters.clusters)
            elif config.Is(hcm_pb2.HttpConnectionManager.DESCRIPTOR):
                manager = hcm_pb2.HttpConnectionManager()
                config.Unpack(manager)
                if manager.HasField("rds"):
                    routes.add(manager.rds.route_config_name)
                elif manager.HasField("route_config"):
                    clusters.update(route_clusters(manager.route_config))
    return frozenset(clusters), frozenset(routes)
