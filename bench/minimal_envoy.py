"""The reference for the data-plane benchmark: a hand-written, minimal Envoy in front of one instance.

One listener, one HTTP connection manager with only the router filter, one STATIC cluster with the
instance's address, nothing else: no EDS, no retries, no outlier detection, no access log, no health
check, Envoy's default round robin and circuit breakers. It is what a person would write to put Envoy
in front of one instance, and so the least any Envoy sidecar can cost.
"""

from __future__ import annotations

from pathlib import Path

from bench.env import ENVOY_CPU, envoy_binary, taskset_prefix
from bench.scenarios import http_text
from demo.processes import ChildProcess

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


def minimal_config(listen_port: int, admin_port: int, upstream_ip: str, upstream_port: int) -> str:
    return MINIMAL_YAML.format(listen_port=listen_port, admin_port=admin_port, upstream_ip=upstream_ip,
                               upstream_port=upstream_port)


class MinimalEnvoy:
    """The hand-written config run by the same Envoy binary, with the same flags as the agent's sidecar."""

    def __init__(self, workdir: Path, name: str, listen_port: int, admin_port: int, upstream_ip: str,
                 upstream_port: int, concurrency: int = 1, cpu: str | None = ENVOY_CPU) -> None:
        self.admin_port = admin_port
        self.config_path = workdir / f"{name}.yaml"
        self.config_path.write_text(minimal_config(listen_port, admin_port, upstream_ip, upstream_port))
        argv = [*(taskset_prefix(cpu) if cpu else []), envoy_binary(), "-c", str(self.config_path),
                "--disable-hot-restart", "--concurrency", str(concurrency), "--log-level", "warn",
                "--drain-time-s", "1"]
        self.child = ChildProcess(name, argv, workdir)

    def start(self) -> MinimalEnvoy:
        self.child.start()
        self.child.wait_until(lambda: http_text(self.admin_url("/ready"), 0.5).strip() == "LIVE", 30, "Envoy ready")
        return self

    def stop(self) -> None:
        self.child.stop()

    @property
    def pid(self) -> int:
        assert self.child.proc is not None
        return self.child.proc.pid

    def admin_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.admin_port}{path}"
