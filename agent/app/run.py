"""`AgentRuntime`, the `run` preset: a ModelArts poller as the source of the shared `Runtime` builder."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.app.runtime import Runtime, SinkFactory
from agent.config import AgentConfig, load_config
from agent.metrics import POLLERS
from agent.modelarts.budget import BudgetRegistry
from agent.modelarts.client import build_client
from agent.modelarts.credentials import check_sources, credentials_from_config
from agent.modelarts.host_state import host_state_for
from agent.sources import Source
from agent.sources.modelarts import ModelArtsSource
from agent.sources.poller import Poller

log = logging.getLogger(__name__)


class AgentRuntime(Runtime[AgentConfig]):
    mode = "run"

    def __init__(self, config: AgentConfig, config_path: Path | None = None,
                 sink_factory: SinkFactory | None = None) -> None:
        check_sources(credentials_from_config(config.auth))  # a missing password is a config error: exit 2
        super().__init__(config, config_path, loader=load_config, sink_factory=sink_factory)
        POLLERS.runtimes.add(self)

    def _make_sources(self) -> Sequence[Source]:
        config = self.config
        # Host-wide: the budget (with its 429 pauses) and IAM tokens are shared with this user's other
        # agent processes, and the pause of a 429 outlives a restart.
        shared, tokens = host_state_for(config)
        self.budget_registry = BudgetRegistry(config.budget.per_user_per_minute, config.budget.per_tenant_per_minute,
                                              config.budget.safety_margin_seconds, shared=shared)
        self.client = build_client(config, self.budget_registry, stop=self.stop_event, token_cache=tokens)
        self.source = ModelArtsSource(config, self.store, self.client, stop=self.stop_event)
        self.poller = Poller(self.source, self.stop_event)
        return [self.poller]

    def _reconfigured(self, config: AgentConfig) -> AgentConfig:
        """Changing ModelArts access or budgets needs a restart; the rest applies now."""
        if config.modelarts != self.config.modelarts or config.auth != self.config.auth \
                or config.budget != self.config.budget:
            log.warning("modelarts/auth/budget changes take effect on restart; applying the rest")
        self.store.set_specs(config.services, config.discovery)
        self.source.update_config(config)
        return config

    def facts(self) -> dict[str, Any]:
        return {"modelarts": {"modelarts_url": self.config.modelarts.modelarts_url,
                              "project_id": self.config.modelarts.project_id},
                "kubernetes": None}

    def poll_interval(self, name: str) -> float | None:
        spec = next((s for s in self.config.services if s.name == name), None)
        return None if spec is None else self.source.effective_interval(spec)

    def budgets(self) -> list[dict[str, Any]]:
        return [budget.usage().__dict__ for budget in self.budget_registry.budgets()]

    def poller_alive(self) -> bool:
        return self.poller.alive()

    def poller_states(self) -> list[tuple[str, bool]]:
        """For `modelarts_agent_poller_alive`. A stopped agent has none (tests run several in one process)."""
        if not self._started or self.stop_event.is_set():
            return []
        return [(self.poller.name, self.poller.alive())]
