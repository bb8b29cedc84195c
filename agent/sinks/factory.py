"""Which sinks a config asks for."""

from __future__ import annotations

from collections.abc import Sequence

from agent.config import AgentConfig
from agent.sinks import Sink


def sinks_for(config: AgentConfig) -> Sequence[Sink]:
    # The Envoy file sink and the others register here as they land.
    return []
