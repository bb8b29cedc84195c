"""Reuse the integration fixtures and the Envoy harness fixtures."""

from tests.envoy.conftest import admin_port, instances, out_dir, start_envoy  # noqa: F401
from tests.integration.conftest import creds_env, emulator  # noqa: F401
