"""Which sinks a config asks for."""

from __future__ import annotations

from collections.abc import Sequence

from agent.config import AgentConfig
from agent.sinks import Sink
from agent.sinks.envoy.files import EnvoyFileSink


def sinks_for(config: AgentConfig) -> Sequence[Sink]:
    # File mode: a colocated Envoy reads the files; the xDS and Kubernetes sinks register here as they land.
    return [EnvoyFileSink(config)]
