"""Fixtures shared with the integration and Envoy suites."""

from tests.envoy.conftest import start_envoy  # noqa: F401
from tests.integration.conftest import creds_env, emulator  # noqa: F401
