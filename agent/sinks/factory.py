"""Which sinks a config asks for."""

from __future__ import annotations

from collections.abc import Sequence

from agent.config import DataPlaneConfig
from agent.sinks import Sink
from agent.sinks.envoy.files import EnvoyFileSink


def sinks_for(config: DataPlaneConfig) -> Sequence[Sink]:
    # File mode: a colocated Envoy reads the files (unless envoy.files is false: xDS only).
    sinks: list[Sink] = [EnvoyFileSink(config)] if config.envoy.files else []
    if config.xds.enabled:
        from agent.sinks.xds.sink import XdsSink

        xds = XdsSink(config)
        xds.start()  # bind now: a busy port fails start-up with a clear error, not later
        sinks.append(xds)
    return sinks
