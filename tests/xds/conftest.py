"""Fixtures for the xDS tests: ADS servers fed snapshots directly, and real Envoys bootstrapped for ADS.

Everything is on loopback; every Envoy and server started here is stopped at teardown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2

from agent.config import AgentConfig
from agent.envoy.ads_bootstrap import AdsBootstrap, build_ads_bootstrap
from agent.envoy.serialize import to_yaml
from agent.sinks.xds.sink import XdsSink
from tests.envoy.conftest import Instances, instances  # noqa: F401  (the fixture, shared with tests/envoy)
from tests.envoy.harness import EnvoyProcess, free_port, require_envoy

StartAdsEnvoy = Callable[..., EnvoyProcess]
StartControlPlane = Callable[..., XdsSink]


@pytest.fixture
def start_ads_envoy(tmp_path: Path) -> Iterator[StartAdsEnvoy]:
    """`start(address, tweak=None, **AdsBootstrap fields)`: a real Envoy fed over ADS, on a free admin port.

    `tweak` may edit the bootstrap message before it is written.
    """
    require_envoy()
    started: list[EnvoyProcess] = []

    def start(address: str, tweak: Callable[[bootstrap_pb2.Bootstrap], None] | None = None,
              **fields: Any) -> EnvoyProcess:
        options = replace(AdsBootstrap(address=address, admin_port=free_port(), node_id=f"envoy-{len(started)}"),
                          **fields)
        bootstrap = build_ads_bootstrap(options)
        if tweak is not None:
            tweak(bootstrap)
        path = tmp_path / f"bootstrap-{len(started)}.yaml"
        path.write_text(to_yaml(bootstrap))
        process = EnvoyProcess(path, options.admin_port, tmp_path)
        started.append(process)
        return process.start()

    try:
        yield start
    finally:
        for process in started:
            process.stop()


@pytest.fixture
def start_control_plane() -> Iterator[StartControlPlane]:
    """`start(config, **XdsSink kwargs)`: an in-process xDS sink serving on config.xds; closed at teardown."""
    sinks: list[XdsSink] = []

    def start(config: AgentConfig, **kwargs: Any) -> XdsSink:
        sink = XdsSink(config, **kwargs)
        sinks.append(sink)
        sink.start()
        return sink

    try:
        yield start
    finally:
        for sink in sinks:
            sink.close(grace=0)


def ads_address(config: AgentConfig) -> str:
    return f"{config.xds.address}:{config.xds.port}"
