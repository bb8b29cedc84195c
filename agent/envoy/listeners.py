"""Listener builders: an HTTP connection manager (http, https, grpc) or a tcp_proxy (tcp) per listener.

A listener sends to one cluster (a service) or to several by weight (a traffic split). In file mode
routes are inlined in the listener (no RDS), so LDS alone describes the whole front of the proxy; the
xDS server passes an `rds` config source instead, and serves `route_configuration(...)` over RDS.
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
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.type.matcher.v3 import string_pb2
from envoy.type.v3 import hash_policy_pb2
from google.protobuf import wrappers_pb2
from google.protobuf.message import Message

from agent.config import LbPolicy, Retries, ServicePolicy
from agent.envoy.access_log import access_logs, adaptive_timing_logs, stream_stats_logs
from agent.envoy.auth import auth_filter
from agent.envoy.clusters import socket_address, u32
from agent.envoy.serialize import duration, pack
from agent.model import Schema

HCM_FILTER = "envoy.filters.network.http_connection_manager"
TCP_PROXY_FILTER = "envoy.filters.network.tcp_proxy"
ROUTER_FILTER = "envoy.filters.http.router"
BUFFER_FILTER = "envoy.filters.http.buffer"
PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"
# Methods that are safe to send twice (RFC 9110 idempotent methods, minus TRACE).
IDEMPOTENT_METHODS = ("GET", "HEAD", "OPTIONS", "PUT", "DELETE")
# How often Envoy may re-pick a host for a retry before settling for one it already tried.
HOST_SELECTION_ATTEMPTS = 5


@dataclass(frozen=True)
class Backend:
    """A weighted cluster of a split listener."""

    cluster: str
    weight: int


Target = str | Sequence[Backend]


def service_listener(spec: ServicePolicy, protocol: Schema,
                     rds: config_source_pb2.ConfigSource | None = None) -> listener_pb2.Listener:
    if spec.listen_port is None:
        raise ValueError(f"service {spec.name} has no listen_port")
    return build_listener(spec.name, spec.listen_address, spec.listen_port, spec.name, spec, protocol, rds)


def build_listener(name: str, address: str, port: int, target: Target, policy: ServicePolicy,
                   protocol: Schema, rds: config_source_pb2.ConfigSource | None = None) -> listener_pb2.Listener:
    """`policy` supplies retries, timeouts and hashing; for a split it is the primary backend's spec.

    With `rds`, an HTTP listener names its route configuration (called `name`, built by
    `route_configuration`) instead of inlining it.
    """
    if protocol == "tcp":
        network_filter = listener_components_pb2.Filter(name=TCP_PROXY_FILTER,
                                                        typed_config=pack(_tcp_proxy(name, target, policy)))
    else:
        network_filter = listener_components_pb2.Filter(name=HCM_FILTER,
                                                        typed_config=pack(_http_manager(name, target, policy, rds)))
    return listener_pb2.Listener(
        name=name,
        address=socket_address(address, port),
        filter_chains=[listener_components_pb2.FilterChain(filters=[network_filter])],
    )


# --- HTTP ------------------------------------------------------------------------------------------


def route_configuration(name: str, target: Target, policy: ServicePolicy) -> route_pb2.RouteConfiguration:
    """The routes of one listener: every request to `target`."""
    route = route_components_pb2.Route(
        name=name,
        match=route_components_pb2.RouteMatch(prefix="/"),
        route=route_action(target, policy),
    )
    # validate_clusters off: Envoy processes the CDS and LDS files in either order, and an inline route
    # naming a cluster that is still warming would make it reject the whole listener update, which the
    # file sink would never resend. A request in that short window gets a 503 instead.
    return route_pb2.RouteConfiguration(name=name, validate_clusters=wrappers_pb2.BoolValue(value=False),
                                        virtual_hosts=[route_components_pb2.VirtualHost(
                                            name=name, domains=["*"], routes=[route])])


def _http_manager(name: str, target: Target, policy: ServicePolicy,
                  rds: config_source_pb2.ConfigSource | None = None) -> hcm_pb2.HttpConnectionManager:
    filters: list[hcm_pb2.HttpFilter] = []
    if policy.timeouts.max_request_bytes is not None:
        # Only when asked: the buffer filter holds the whole body (no streaming) and answers 413 past the limit.
        filters.append(http_filter(BUFFER_FILTER, buffer_pb2.Buffer(
            max_request_bytes=u32(policy.timeouts.max_request_bytes))))
    auth = auth_filter(policy.auth)
    if auth is not None:
        filters.append(http_filter(*auth))
    filters.append(http_filter(ROUTER_FILTER, router_pb2.Router()))
    manager = http_connection_manager(name, filters, policy.timeouts.idle_seconds)
    manager.access_log.extend(access_logs(name, policy.access_log))
    manager.access_log.extend(stream_stats_logs(name))
    if policy.adaptive_lb:
        manager.access_log.extend(adaptive_timing_logs())  # per-host times to first byte for the loop
    if rds is None:
        manager.route_config.CopyFrom(route_configuration(name, target, policy))
    else:
        manager.rds.CopyFrom(hcm_pb2.Rds(config_source=rds, route_config_name=name))
    return manager


def http_connection_manager(stat_prefix: str, filters: Sequence[hcm_pb2.HttpFilter],
                            idle_seconds: float) -> hcm_pb2.HttpConnectionManager:
    """The connection manager without its routes (the caller sets `route_config` or `rds`)."""
    return hcm_pb2.HttpConnectionManager(
        stat_prefix=stat_prefix,
        # AUTO serves HTTP/1.1 and cleartext HTTP/2 (gRPC clients) on the same port.
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        http_filters=list(filters),
        # Idle rather than total: a long generation that keeps streaming is fine, a stuck one is not.
        stream_idle_timeout=duration(idle_seconds),
        upgrade_configs=[hcm_pb2.HttpConnectionManager.UpgradeConfig(upgrade_type="websocket")],
    )


def http_filter(name: str, config: Message) -> hcm_pb2.HttpFilter:
    return hcm_pb2.HttpFilter(name=name, typed_config=pack(config))


def route_action(target: Target, policy: ServicePolicy) -> route_components_pb2.RouteAction:
    action = route_components_pb2.RouteAction(
        # Always explicit: an unset timeout means Envoy's 15 s default, and 0s means "no total timeout".
        timeout=duration(policy.timeouts.request_seconds),
    )
    if isinstance(target, str):
        action.cluster = target
    else:
        action.weighted_clusters.CopyFrom(route_components_pb2.WeightedCluster(clusters=[
            route_components_pb2.WeightedCluster.ClusterWeight(name=b.cluster, weight=u32(b.weight))
            for b in target]))
    if policy.retries.enabled and policy.retries.num_retries > 0:
        action.retry_policy.CopyFrom(retry_policy(policy.retries))
    if policy.lb.policy in (LbPolicy.ring_hash, LbPolicy.maglev) and policy.lb.hash_key is not None:
        action.hash_policy.append(_hash_policy(policy))
    return action


def retry_policy(retries: Retries) -> route_components_pb2.RetryPolicy:
    """Retries on another host, for idempotent requests only unless `idempotent_only` is off.

    `retriable_request_headers` is the gate: Envoy keeps the retry policy for a request only if at
    least ONE of these matchers matches its headers (OR semantics; no match clears retry_on, even one
    a client set with x-envoy-retry-on). So one exact `:method` matcher per idempotent method plus a
    `present_match` on the idempotency header means "an idempotent method, or any method carrying an
    idempotency key". `idempotent_paths` add `:path` matchers: gRPC methods are all POST, so an idempotent
    gRPC method is named by its path.
    """
    policy = route_components_pb2.RetryPolicy(
        retry_on=retries.retry_on,
        num_retries=u32(retries.num_retries),
        retriable_status_codes=list(retries.retriable_status_codes),
        retry_host_predicate=[route_components_pb2.RetryPolicy.RetryHostPredicate(
            name=PREVIOUS_HOSTS, typed_config=pack(previous_hosts_pb2.PreviousHostsPredicate()))],
        host_selection_retry_max_attempts=HOST_SELECTION_ATTEMPTS,
    )
    if retries.per_try_timeout_seconds is not None:
        policy.per_try_timeout.CopyFrom(duration(retries.per_try_timeout_seconds))
    if retries.idempotent_only:
        policy.retriable_request_headers.extend(
            route_components_pb2.HeaderMatcher(name=":method", string_match=string_pb2.StringMatcher(exact=method))
            for method in IDEMPOTENT_METHODS)
        policy.retriable_request_headers.append(
            route_components_pb2.HeaderMatcher(name=retries.idempotency_header.lower(), present_match=True))
        policy.retriable_request_headers.extend(
            route_components_pb2.HeaderMatcher(name=":path", string_match=string_pb2.StringMatcher(prefix=path)
                                               if path.endswith("/") else string_pb2.StringMatcher(exact=path))
            for path in retries.idempotent_paths)
    return policy


def _hash_policy(policy: ServicePolicy) -> route_components_pb2.RouteAction.HashPolicy:
    key = policy.lb.hash_key
    hashing = route_components_pb2.RouteAction.HashPolicy
    if key is None or key.source_ip:
        return hashing(connection_properties=hashing.ConnectionProperties(source_ip=True))
    if key.header is not None:
        return hashing(header=hashing.Header(header_name=key.header.lower()))
    # A TTL of 0 makes Envoy set a session cookie when the client has none, so stickiness starts with
    # the first response instead of only once the client invents a cookie.
    return hashing(cookie=hashing.Cookie(name=key.cookie or "", ttl=duration(0), path="/"))


# --- TCP -------------------------------------------------------------------------------------------


def _tcp_proxy(name: str, target: Target, policy: ServicePolicy) -> tcp_proxy_pb2.TcpProxy:
    proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=name, idle_timeout=duration(policy.timeouts.idle_seconds),
                                   access_log=access_logs(name, policy.access_log, tcp=True))
    if isinstance(target, str):
        proxy.cluster = target
    else:
        proxy.weighted_clusters.CopyFrom(tcp_proxy_pb2.TcpProxy.WeightedCluster(clusters=[
            tcp_proxy_pb2.TcpProxy.WeightedCluster.ClusterWeight(name=b.cluster, weight=b.weight)
            for b in target]))
    if policy.retries.enabled:
        # A TCP stream cannot be replayed, but a failed connect can be tried on another host.
        proxy.max_connect_attempts.CopyFrom(u32(policy.retries.num_retries + 1))
    key = policy.lb.hash_key
    if policy.lb.policy in (LbPolicy.ring_hash, LbPolicy.maglev) and key is not None and key.source_ip:
        # Only source_ip exists at layer 4; header/cookie keys cannot apply to tcp.
        proxy.hash_policy.append(hash_policy_pb2.HashPolicy(source_ip=hash_policy_pb2.HashPolicy.SourceIp()))
    return proxy
