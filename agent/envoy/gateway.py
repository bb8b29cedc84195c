"""The shared gateway: one listener whose routes (served over RDS) pick a service by Host or path.

    Host: llm  or  llm.<anything>        -> service llm   (port ignored: strip_any_host_port)
    /llm/v1/chat  (any other Host)       -> service llm, path rewritten to /v1/chat

Splits are targets too (by their name). Each route carries its service's retry, timeout, hashing,
idle-timeout and body-limit settings, so the gateway behaves like that service's sidecar listener.
TCP services have no Host or path to route on and are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from envoy.config.core.v3 import config_source_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.buffer.v3 import buffer_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from agent.config import GatewayConfig, ServicePolicy, Timeouts
from agent.envoy.access_log import adaptive_timing_logs, stream_stats_logs
from agent.envoy.clusters import socket_address, u32
from agent.envoy.listeners import (
    BUFFER_FILTER,
    HCM_FILTER,
    ROUTER_FILTER,
    Target,
    http_connection_manager,
    http_filter,
    route_action,
)
from agent.envoy.serialize import duration, pack

GATEWAY_NAME = "modelarts-gateway"  # the listener and its route configuration


@dataclass(frozen=True)
class GatewayTarget:
    """A service or a split the gateway routes to; `policy` is its (primary backend's) spec."""

    name: str
    target: Target
    policy: ServicePolicy


def gateway_listener(gateway: GatewayConfig, targets: Sequence[GatewayTarget],
                     rds: config_source_pb2.ConfigSource) -> listener_pb2.Listener:
    filters = []
    limits = [t.policy.timeouts.max_request_bytes for t in targets if t.policy.timeouts.max_request_bytes]
    if limits:
        # The filter needs a limit of its own; each route sets (or disables) its service's limit.
        filters.append(http_filter(BUFFER_FILTER, buffer_pb2.Buffer(max_request_bytes=u32(max(limits)))))
    filters.append(http_filter(ROUTER_FILTER, router_pb2.Router()))
    manager = http_connection_manager(GATEWAY_NAME, filters, Timeouts().idle_seconds)
    manager.rds.CopyFrom(hcm_pb2.Rds(config_source=rds, route_config_name=GATEWAY_NAME))
    # First-byte and duration histograms, gRPC statuses; routes are named after their service.
    manager.access_log.extend(stream_stats_logs("%ROUTE_NAME%"))
    if any(t.policy.adaptive_lb for t in targets):
        manager.access_log.extend(adaptive_timing_logs())  # per-host times to first byte for the loop
    # Clients send "llm:8080"; domains name services without ports.
    manager.strip_any_host_port = True
    return listener_pb2.Listener(
        name=GATEWAY_NAME,
        address=socket_address(gateway.listen_address, gateway.listen_port),
        filter_chains=[listener_components_pb2.FilterChain(filters=[listener_components_pb2.Filter(
            name=HCM_FILTER, typed_config=pack(manager))])],
    )


def gateway_routes(gateway: GatewayConfig, targets: Sequence[GatewayTarget]) -> route_pb2.RouteConfiguration:
    buffering = any(t.policy.timeouts.max_request_bytes for t in targets)
    vhosts: list[route_components_pb2.VirtualHost] = []
    if gateway.route_by_host:
        vhosts.extend(route_components_pb2.VirtualHost(
            name=t.name, domains=[t.name, f"{t.name}.*"],
            routes=[_route(t, route_components_pb2.RouteMatch(prefix="/"), buffering)]) for t in targets)
    if gateway.route_by_path:
        routes: list[route_components_pb2.Route] = []
        for t in targets:
            routes.append(_route(t, route_components_pb2.RouteMatch(prefix=f"/{t.name}/"), buffering, rewrite=True))
            routes.append(_route(t, route_components_pb2.RouteMatch(path=f"/{t.name}"), buffering, rewrite=True))
        vhosts.append(route_components_pb2.VirtualHost(name="by-path", domains=["*"], routes=routes))
    return route_pb2.RouteConfiguration(name=GATEWAY_NAME, virtual_hosts=vhosts)


def _route(target: GatewayTarget, match: route_components_pb2.RouteMatch, buffering: bool,
           rewrite: bool = False) -> route_components_pb2.Route:
    action = route_action(target.target, target.policy)
    timeouts = target.policy.timeouts
    # The sidecar sets this on its own connection manager; the shared one sets it per route.
    action.idle_timeout.CopyFrom(duration(timeouts.idle_seconds))
    if rewrite:
        action.prefix_rewrite = "/"
    route = route_components_pb2.Route(name=target.name, match=match, route=action)
    if buffering:
        per_route = buffer_pb2.BufferPerRoute(buffer=buffer_pb2.Buffer(
            max_request_bytes=u32(timeouts.max_request_bytes))) if timeouts.max_request_bytes \
            else buffer_pb2.BufferPerRoute(disabled=True)
        route.typed_per_filter_config[BUFFER_FILTER].CopyFrom(pack(per_route))
    return route
