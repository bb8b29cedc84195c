"""The reference for the data-plane benchmark: a hand-written, minimal Envoy in front of one instance.

One listener, one HTTP connection manager with only the router filter, one STATIC cluster with the
instance's address, nothing else: no EDS, no retries, no outlier detection, no access log, no health
check, Envoy's default round robin and circuit breakers. It is what a person would write to put Envoy
in front of one instance, and so the least any Envoy sidecar can cost.
"""

from __future__ import annotations

from pathlib import Path

from bench.env import ENVOY_CPU
from bench.scenarios import EnvoyProcess

MINIMAL_YAML = """\
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}}}
static_resources:
  listeners:
  - name: minimal
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen_port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: minimal
          route_config:
            virtual_hosts:
            - name: minimal
              domains: ["*"]
              routes:
              - match: {{prefix: /}}
                route: {{cluster: instance}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: instance
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: instance
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {{socket_address: {{address: {upstream_ip}, port_value: {upstream_port}}}}}
"""
# For a gRPC instance: the same cluster speaking cleartext HTTP/2 upstream, the one option gRPC needs.
HTTP2_UPSTREAM_YAML = """\
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
"""


def minimal_config(listen_port: int, admin_port: int, upstream_ip: str, upstream_port: int,
                   http2: bool = False) -> str:
    return MINIMAL_YAML.format(listen_port=listen_port, admin_port=admin_port, upstream_ip=upstream_ip,
                               upstream_port=upstream_port) + (HTTP2_UPSTREAM_YAML if http2 else "")


class MinimalEnvoy(EnvoyProcess):
    """The hand-written config run by the same Envoy binary, with the same flags as the agent's sidecar."""

    def __init__(self, workdir: Path, name: str, listen_port: int, admin_port: int, upstream_ip: str,
                 upstream_port: int, concurrency: int = 1, cpu: str | None = ENVOY_CPU, http2: bool = False) -> None:
        config_path = workdir / f"{name}.yaml"
        config_path.write_text(minimal_config(listen_port, admin_port, upstream_ip, upstream_port, http2))
        super().__init__(config_path, admin_port, workdir, name, concurrency, cpu)
