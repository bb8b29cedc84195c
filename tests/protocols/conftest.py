"""Fixtures for the protocol tests: emulator instances and one real data path (file sidecar, ADS sidecar,
or ADS gateway) in front of them. Everything is on loopback and stopped at teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from modelarts_emulator import Emulator, EmulatorConfig

from tests.envoy.conftest import admin_port, out_dir, start_envoy  # noqa: F401  (fixtures)
from tests.protocols.paths import DataPath
from tests.xds.conftest import start_ads_envoy, start_control_plane  # noqa: F401  (fixtures)

StartEmulator = Callable[..., Emulator]


@pytest.fixture
def emulator() -> Iterator[StartEmulator]:
    """`emulator(*ServiceConfig)`: a running emulator whose instances live on 127.0.6.x."""
    started: list[Emulator] = []

    def start(*services: object, **overrides: object) -> Emulator:
        config = EmulatorConfig.model_validate({"services": list(services), "instance_address_base": "127.0.6.10",
                                                "drain_timeout_seconds": 5, **overrides})
        emu = Emulator(config).start()
        started.append(emu)
        return emu

    try:
        yield start
    finally:
        for emu in started:
            emu.stop()


@pytest.fixture
def data_path(request: pytest.FixtureRequest, tmp_path: Path, start_envoy, start_control_plane,  # noqa: F811
              start_ads_envoy) -> DataPath:  # noqa: F811
    """The mode comes from indirect parametrization ("file", "ads" or "gateway"); "file" by default."""
    mode = getattr(request, "param", "file")
    return DataPath(mode, tmp_path, start_envoy, start_control_plane, start_ads_envoy)
