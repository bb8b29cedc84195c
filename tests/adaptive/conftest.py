"""The Envoy fixtures (real Envoy processes and upstreams, always cleaned up) shared with tests/envoy."""

from tests.envoy.conftest import admin_port, instances, out_dir, start_envoy

__all__ = ["admin_port", "instances", "out_dir", "start_envoy"]
