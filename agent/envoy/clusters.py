"""Cluster and ClusterLoadAssignment builders: one EDS cluster per configured service."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Mapping

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import (
    address_pb2,
    base_pb2,
    config_source_pb2,
    extension_pb2,
    health_check_pb2,
)
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.extensions.load_balancing_policies.least_request.v3 import least_request_pb2
from envoy.extensions.load_balancing_policies.maglev.v3 import maglev_pb2
from envoy.extensions.load_balancing_policies.random.v3 import random_pb2
from envoy.extensions.load_balancing_policies.ring_hash.v3 import ring_hash_pb2
from envoy.extensions.load_balancing_policies.round_robin.v3 import round_robin_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.matcher.v3 import string_pb2
from envoy.type.v3 import http_pb2, percent_pb2
from google.protobuf import wrappers_pb2
from google.protobuf.message import Message

from agent.config import (
    CircuitBreakers,
    HealthCheck,
    LbPolicy,
    LoadBalancing,
    OutlierDetection,
    Retries,
    ServicePolicy,
    UpstreamTls,
)
from agent.envoy.serialize import duration, pack
from agent.errors import ConfigError
from agent.model import Schema, ServiceSnapshot

log = logging.getLogger(__name__)

# Where a cluster's endpoints come from: a file in file mode, ADS in xDS mode.
EdsSource = Callable[[str], config_source_pb2.ConfigSource]
# Adaptive load balancing: service name -> endpoint address ("ip:port") -> load_balancing_weight.
EndpointWeights = Mapping[str, Mapping[str, int]]

HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
TLS_SOCKET = "envoy.transport_sockets.tls"
# Envoy has no default trust store: without a CA it would not verify upstream certificates at all.
SYSTEM_CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem")
_UINT32_MAX = 2**32 - 1


def u32(value: int) -> wrappers_pb2.UInt32Value:
    return wrappers_pb2.UInt32Value(value=min(max(value, 0), _UINT32_MAX))


def build_load_assignment(service: ServiceSnapshot,
                          weights: Mapping[str, int] | None = None) -> endpoint_pb2.ClusterLoadAssignment:
    """Ready endpoints only, sorted, one locality.

    Not-ready endpoints are left out rather than sent as UNHEALTHY: Envoy's panic mode (more than half
    the hosts unhealthy) would otherwise route to them, and a not-ready instance must get no traffic.
    `weights` (Endpoint.address -> weight, from the adaptive load balancer) sets `load_balancing_weight`.
    An endpoint it does not name yet (just discovered) gets the heaviest weight among the endpoints that
    stay: it is presumed as good as the best until measured, rather than starved at Envoy's default of 1.
    """
    unique = sorted({(e.ip, e.port, e.address) for e in service.endpoints if e.ready})
    known = [weights[address] for _, _, address in unique if address in weights] if weights else []
    heaviest = max(known or (weights or {}).values(), default=None)
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name=service.name)
    if unique:
        add = assignment.endpoints.add().lb_endpoints.add
        # Fields set in place: building sub-messages and copying them in costs 3-4x as much (10,000 endpoints).
        for ip, port, address in unique:
            lb_endpoint = add()
            socket = lb_endpoint.endpoint.address.socket_address
            socket.address = ip
            socket.port_value = port
            weight = weights.get(address, heaviest) if weights else None
            if weight is not None:
                lb_endpoint.load_balancing_weight.value = min(max(1, weight), _UINT32_MAX)  # Envoy refuses 0
    return assignment


def socket_address(ip: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=ip, port_value=port))


def build_cluster(spec: ServicePolicy, protocol: Schema, eds_source: EdsSource) -> cluster_pb2.Cluster:
    cluster = cluster_pb2.Cluster(
        name=spec.name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=eds_source(spec.name),
                                                                service_name=spec.name),
        connect_timeout=duration(spec.timeouts.connect_seconds),
        load_balancing_policy=_lb_policy(spec.lb),
        circuit_breakers=_circuit_breakers(spec.circuit_breakers, spec.retries),
        # The source of truth for membership is discovery: a host it removes goes now, even if it
        # still passes active health checks.
        ignore_health_on_host_removal=True,
        # Requests, errors and latency per instance in /stats/prometheus (the dashboards' per-instance panels).
        track_cluster_stats=cluster_pb2.TrackClusterStats(per_endpoint_stats=True),
    )
    if spec.outlier_detection.enabled:
        cluster.outlier_detection.CopyFrom(_outlier_detection(spec.outlier_detection))
    if spec.health_check is not None:
        cluster.health_checks.append(_health_check(spec.health_check, protocol))
    if protocol != "tcp":
        cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].CopyFrom(pack(_http_options(protocol)))
    if protocol == "https":
        cluster.transport_socket.CopyFrom(base_pb2.TransportSocket(
            name=TLS_SOCKET, typed_config=pack(_upstream_tls(spec.name, spec.tls))))
    return cluster


def _typed_policy(name: str, config: Message) -> cluster_pb2.LoadBalancingPolicy:
    return cluster_pb2.LoadBalancingPolicy(policies=[cluster_pb2.LoadBalancingPolicy.Policy(
        typed_extension_config=extension_pb2.TypedExtensionConfig(name=name, typed_config=pack(config)))])


def _lb_policy(lb: LoadBalancing) -> cluster_pb2.LoadBalancingPolicy:
    # The typed `load_balancing_policy` extensions are the current API; `lb_policy` is the legacy enum.
    prefix = "envoy.load_balancing_policies."
    if lb.policy is LbPolicy.least_request:
        least = least_request_pb2.LeastRequest()
        if lb.choice_count is not None:
            least.choice_count.CopyFrom(u32(lb.choice_count))
        return _typed_policy(prefix + "least_request", least)
    if lb.policy is LbPolicy.round_robin:
        return _typed_policy(prefix + "round_robin", round_robin_pb2.RoundRobin())
    if lb.policy is LbPolicy.random:
        return _typed_policy(prefix + "random", random_pb2.Random())
    if lb.policy is LbPolicy.ring_hash:
        return _typed_policy(prefix + "ring_hash", ring_hash_pb2.RingHash())
    return _typed_policy(prefix + "maglev", maglev_pb2.Maglev())


def _circuit_breakers(cb: CircuitBreakers, retries: Retries) -> circuit_breaker_pb2.CircuitBreakers:
    thresholds = circuit_breaker_pb2.CircuitBreakers.Thresholds(
        priority=base_pb2.RoutingPriority.DEFAULT,
        max_connections=u32(cb.max_connections),
        max_pending_requests=u32(cb.max_pending_requests),
        max_requests=u32(cb.max_requests),
        max_retries=u32(cb.max_retries),
    )
    if retries.enabled:
        # A budget scales with load, unlike a fixed max_retries; when set, Envoy uses it instead.
        thresholds.retry_budget.CopyFrom(circuit_breaker_pb2.CircuitBreakers.Thresholds.RetryBudget(
            budget_percent=percent_pb2.Percent(value=retries.budget_percent),
            min_retry_concurrency=u32(retries.min_retry_concurrency),
        ))
    return circuit_breaker_pb2.CircuitBreakers(thresholds=[thresholds])


def _outlier_detection(od: OutlierDetection) -> outlier_detection_pb2.OutlierDetection:
    return outlier_detection_pb2.OutlierDetection(
        consecutive_5xx=u32(od.consecutive_5xx),
        consecutive_gateway_failure=u32(od.consecutive_gateway_failure),
        # Envoy counts gateway failures but enforces 0% of those ejections unless told otherwise.
        enforcing_consecutive_gateway_failure=u32(100),
        # Connection failures and resets count separately, so a dead instance is ejected after a couple
        # of refused connects instead of waiting for five 5xx.
        split_external_local_origin_errors=True,
        consecutive_local_origin_failure=u32(od.consecutive_local_origin_failure),
        enforcing_consecutive_local_origin_failure=u32(100),
        interval=duration(od.interval_seconds),
        base_ejection_time=duration(od.base_ejection_seconds),
        max_ejection_percent=u32(od.max_ejection_percent),
    )


def _health_check(hc: HealthCheck, protocol: Schema) -> health_check_pb2.HealthCheck:
    check = health_check_pb2.HealthCheck(
        timeout=duration(hc.timeout_seconds),
        interval=duration(hc.interval_seconds),
        # Envoy checks idle clusters only every 60 s by default; a sidecar's traffic may be sporadic.
        no_traffic_interval=duration(hc.interval_seconds),
        unhealthy_threshold=u32(hc.unhealthy_threshold),
        healthy_threshold=u32(hc.healthy_threshold),
    )
    if hc.type == "tcp":
        check.tcp_health_check.SetInParent()  # connect-only check
    elif hc.type == "auto" and protocol == "grpc":
        # grpc.health.v1 Check over the cluster's HTTP/2: SERVING passes, NOT_SERVING or an error fails.
        check.grpc_health_check.CopyFrom(health_check_pb2.HealthCheck.GrpcHealthCheck(
            service_name=hc.grpc_service_name))
    else:
        codec = http_pb2.HTTP2 if protocol == "grpc" else http_pb2.HTTP1
        check.http_health_check.CopyFrom(health_check_pb2.HealthCheck.HttpHealthCheck(
            path=hc.path, codec_client_type=codec))
    return check


def _http_options(protocol: Schema) -> http_protocol_options_pb2.HttpProtocolOptions:
    options = http_protocol_options_pb2.HttpProtocolOptions()
    explicit = options.explicit_http_config
    if protocol == "grpc":
        explicit.http2_protocol_options.SetInParent()  # gRPC needs HTTP/2 upstream
    else:
        explicit.http_protocol_options.SetInParent()  # HTTP/1.1, stated rather than implied
    return options


def _upstream_tls(name: str, tls: UpstreamTls) -> tls_pb2.UpstreamTlsContext:
    context = tls_pb2.UpstreamTlsContext()
    context.common_tls_context.SetInParent()
    if tls.sni:
        context.sni = tls.sni
    if tls.insecure_skip_verify:
        _warn_insecure(name)
        return context
    validation = context.common_tls_context.validation_context
    validation.trusted_ca.filename = os.path.abspath(tls.ca_file) if tls.ca_file else _system_ca_bundle(name)
    if tls.sni:
        # Envoy checks the chain but not the name unless asked; the SNI is the name we expect.
        validation.match_typed_subject_alt_names.append(common_pb2.SubjectAltNameMatcher(
            san_type=common_pb2.SubjectAltNameMatcher.DNS, matcher=string_pb2.StringMatcher(exact=tls.sni)))
    return context


def _system_ca_bundle(name: str) -> str:
    for candidate in SYSTEM_CA_BUNDLES:
        if os.path.isfile(candidate):
            return candidate
    raise ConfigError(f"service {name!r} is https but has no tls.ca_file and no system CA bundle was found "
                      f"(looked at {', '.join(SYSTEM_CA_BUNDLES)}); set tls.ca_file or tls.insecure_skip_verify")


@functools.cache
def _warn_insecure(name: str) -> None:
    # Cached: publish runs on every snapshot, the warning is worth saying once per service.
    log.warning("tls.insecure_skip_verify is set: upstream certificates are NOT verified", extra={"service": name})
