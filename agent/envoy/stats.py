"""A scrape-only listener: Prometheus reaches `/stats/prometheus` while the admin API stays on loopback.

The admin interface can drain and reconfigure the proxy, so it never leaves loopback. This static
listener forwards exactly one read-only path to it and answers 404 to everything else.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from agent.envoy.clusters import socket_address
from agent.envoy.serialize import duration, pack

ADMIN_CLUSTER = "envoy_admin_stats"
STATS_LISTENER = "envoy_prometheus_stats"
STATS_PATH = "/stats/prometheus"


def stats_resources(address: str, port: int, admin_address: str,
                    admin_port: int) -> tuple[listener_pb2.Listener, cluster_pb2.Cluster]:
    cluster = cluster_pb2.Cluster(
        name=ADMIN_CLUSTER, type=cluster_pb2.Cluster.STATIC, connect_timeout=duration(1.0),
        load_assignment=endpoint_pb2.ClusterLoadAssignment(cluster_name=ADMIN_CLUSTER, endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[endpoint_components_pb2.LbEndpoint(
                endpoint=endpoint_components_pb2.Endpoint(address=socket_address(admin_address, admin_port)))])]),
    )
    routes = route_pb2.RouteConfiguration(name=STATS_LISTENER, virtual_hosts=[route_components_pb2.VirtualHost(
        name=STATS_LISTENER, domains=["*"], routes=[
            route_components_pb2.Route(
                match=route_components_pb2.RouteMatch(path=STATS_PATH,
                                                      headers=[_method_is("GET")]),
                route=route_components_pb2.RouteAction(cluster=ADMIN_CLUSTER)),
            route_components_pb2.Route(
                match=route_components_pb2.RouteMatch(prefix="/"),
                direct_response=route_components_pb2.DirectResponseAction(status=404)),
        ])])
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix=STATS_LISTENER, route_config=routes,
        http_filters=[hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=pack(router_pb2.Router()))])
    listener = listener_pb2.Listener(
        name=STATS_LISTENER, address=socket_address(address, port),
        filter_chains=[listener_components_pb2.FilterChain(filters=[listener_components_pb2.Filter(
            name="envoy.filters.network.http_connection_manager", typed_config=pack(manager))])])
    return listener, cluster


def _method_is(method: str) -> route_components_pb2.HeaderMatcher:
    from envoy.type.matcher.v3 import string_pb2

    return route_components_pb2.HeaderMatcher(name=":method", string_match=string_pb2.StringMatcher(exact=method))
