"""The Envoy bootstrap for ADS mode: every resource from the agent's xDS server over one gRPC stream.

Admin stays on loopback; the xDS server is a static (IP) or DNS cluster speaking HTTP/2, optionally
over TLS with a client certificate (mTLS). Node metadata selects the node's view (see `nodes`).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import (
    backoff_pb2,
    base_pb2,
    config_source_pb2,
    grpc_service_pb2,
    protocol_pb2,
)
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.matcher.v3 import string_pb2

from agent.envoy.bootstrap import ensure_loopback, overload_manager
from agent.envoy.clusters import HTTP_PROTOCOL_OPTIONS, TLS_SOCKET, socket_address
from agent.envoy.nodes import Role, node_metadata
from agent.envoy.serialize import duration, pack
from agent.envoy.stats import stats_resources
from agent.errors import ConfigError

XDS_CLUSTER = "modelarts_xds"
# Every resource over the one ADS stream (the bootstrap's CDS/LDS and the resources' EDS/RDS).
ADS_SOURCE = config_source_pb2.ConfigSource(ads=config_source_pb2.AggregatedConfigSource(),
                                            resource_api_version=config_source_pb2.ApiVersion.V3)


@dataclass(frozen=True)
class AdsBootstrap:
    address: str  # "host:port" or "[v6]:port" of the agent's xDS server
    node_id: str = "modelarts-agent"
    cluster: str = "modelarts-sidecar"
    admin_address: str = "127.0.0.1"
    admin_port: int = 9901
    delta: bool = False  # DELTA_GRPC instead of state-of-the-world GRPC
    services: tuple[str, ...] | None = None  # node metadata: only these services
    role: Role | None = None
    listen_address: str | None = None
    ca_file: Path | None = None  # TLS to the xDS server: trust this CA
    cert_file: Path | None = None  # mTLS: present this client certificate
    key_file: Path | None = None
    stats_port: int | None = None  # a listener serving only GET /stats/prometheus
    stats_address: str = "0.0.0.0"


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"--ads {address!r}: expected HOST:PORT, e.g. 127.0.0.1:18000")
    return host.strip("[]"), int(port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def build_ads_bootstrap(options: AdsBootstrap) -> bootstrap_pb2.Bootstrap:
    ensure_loopback(options.admin_address)
    if (options.cert_file is None) != (options.key_file is None):
        raise ConfigError("--ads-cert and --ads-key go together")
    if options.cert_file is not None and options.ca_file is None:
        raise ConfigError("--ads-cert needs --ads-ca (the CA that signed the xDS server's certificate)")
    api_type = config_source_pb2.ApiConfigSource.DELTA_GRPC if options.delta \
        else config_source_pb2.ApiConfigSource.GRPC
    return bootstrap_pb2.Bootstrap(
        node=base_pb2.Node(id=options.node_id, cluster=options.cluster, metadata=node_metadata(
            list(options.services) if options.services is not None else None, options.role, options.listen_address)),
        admin=bootstrap_pb2.Admin(address=socket_address(options.admin_address, options.admin_port)),
        dynamic_resources=bootstrap_pb2.Bootstrap.DynamicResources(
            ads_config=config_source_pb2.ApiConfigSource(
                api_type=api_type,
                transport_api_version=config_source_pb2.ApiVersion.V3,
                grpc_services=[grpc_service_pb2.GrpcService(envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(
                    cluster_name=XDS_CLUSTER,
                    # Envoy's default reconnect backoff grows to 30 s; a restarted agent should be
                    # picked up within seconds (the jitter still spreads a fleet's reconnects).
                    retry_policy=base_pb2.RetryPolicy(retry_back_off=backoff_pb2.BackoffStrategy(
                        base_interval=duration(0.25), max_interval=duration(4.0))),
                ))],
                set_node_on_first_message_only=True,
            ),
            cds_config=ADS_SOURCE,
            lds_config=ADS_SOURCE,
        ),
        static_resources=_static_resources(options),
        overload_manager=overload_manager(),
    )


def _static_resources(options: AdsBootstrap) -> bootstrap_pb2.Bootstrap.StaticResources:
    static = bootstrap_pb2.Bootstrap.StaticResources(clusters=[_xds_cluster(options)])
    if options.stats_port is not None:
        listener, cluster = stats_resources(options.stats_address, options.stats_port, options.admin_address,
                                            options.admin_port)
        static.listeners.append(listener)
        static.clusters.append(cluster)
    return static


def _xds_cluster(options: AdsBootstrap) -> cluster_pb2.Cluster:
    host, port = split_address(options.address)
    http2 = protocol_pb2.Http2ProtocolOptions(connection_keepalive=protocol_pb2.KeepaliveSettings(
        # Notice a control plane that vanished without closing the connection (host down, partition).
        interval=duration(15), timeout=duration(5)))
    options_msg = http_protocol_options_pb2.HttpProtocolOptions()
    options_msg.explicit_http_config.http2_protocol_options.CopyFrom(http2)  # gRPC needs HTTP/2
    cluster = cluster_pb2.Cluster(
        name=XDS_CLUSTER,
        type=cluster_pb2.Cluster.STATIC if _is_ip(host) else cluster_pb2.Cluster.STRICT_DNS,
        connect_timeout=duration(2),
        load_assignment=endpoint_pb2.ClusterLoadAssignment(cluster_name=XDS_CLUSTER, endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[endpoint_components_pb2.LbEndpoint(
                endpoint=endpoint_components_pb2.Endpoint(address=socket_address(host, port)))])]),
    )
    cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].CopyFrom(pack(options_msg))
    if options.ca_file is not None:
        cluster.transport_socket.CopyFrom(base_pb2.TransportSocket(name=TLS_SOCKET,
                                                                  typed_config=pack(_tls(options, host))))
    return cluster


def _tls(options: AdsBootstrap, host: str) -> tls_pb2.UpstreamTlsContext:
    assert options.ca_file is not None
    context = tls_pb2.UpstreamTlsContext()
    common = context.common_tls_context
    common.alpn_protocols.append("h2")  # gRPC servers expect HTTP/2 negotiated by ALPN
    validation = common.validation_context
    validation.trusted_ca.filename = os.path.abspath(options.ca_file)
    # Check the name, not only the chain: the server certificate must be for the address we dial.
    san_type = common_pb2.SubjectAltNameMatcher.IP_ADDRESS if _is_ip(host) else common_pb2.SubjectAltNameMatcher.DNS
    validation.match_typed_subject_alt_names.append(common_pb2.SubjectAltNameMatcher(
        san_type=san_type, matcher=string_pb2.StringMatcher(exact=host)))
    if not _is_ip(host):
        context.sni = host
    if options.cert_file is not None and options.key_file is not None:
        certificate = common.tls_certificates.add()
        certificate.certificate_chain.filename = os.path.abspath(options.cert_file)
        certificate.private_key.filename = os.path.abspath(options.key_file)
    return context
