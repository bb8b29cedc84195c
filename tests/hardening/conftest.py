"""Reuse the integration fixtures (emulator, credentials in the environment)."""

from tests.integration.conftest import creds_env, emulator  # noqa: F401
