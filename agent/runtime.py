"""Wires a running agent: config → sources → snapshot store → sinks, plus the admin endpoint."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agent.adaptive.runner import AdaptiveRunner
from agent.admin_server import AdminServer
from agent.clock import SYSTEM_CLOCK
from agent.config import AgentConfig
from agent.envoy.auth import watched_files
from agent.errors import ConfigError
from agent.file_watch import ConfigWatcher, FileWatcher
from agent.metrics import POLLERS
from agent.modelarts.budget import BudgetRegistry
from agent.modelarts.client import allowed_networks, build_client
from agent.modelarts.credentials import check_sources, credentials_from_config
from agent.modelarts.host_state import host_state_for
from agent.sinks import Sink
from agent.sinks.runner import SinkSet
from agent.sinks.state_file import StateFileSink, load_state
from agent.snapshot import SnapshotStore
from agent.sources.modelarts import ModelArtsSource

log = logging.getLogger(__name__)

SinkFactory = Callable[[AgentConfig], Sequence[Sink]]


def rendered_files(config: AgentConfig) -> list[Path]:
    return [path for spec in config.services for path in watched_files(spec.auth)]


class AgentRuntime:
    def __init__(self, config: AgentConfig, config_path: Path | None = None,
                 sink_factory: SinkFactory | None = None) -> None:
        self.config = config
        self.stop_event = threading.Event()
        self.store = SnapshotStore(config.services, config.discovery)
        check_sources(credentials_from_config(config.auth))  # a missing password is a config error: exit 2
        # Host-wide: the budget (with its 429 pauses) and IAM tokens are shared with this user's other
        # agent processes, and the pause of a 429 outlives a restart.
        shared, tokens = host_state_for(config)
        self.budgets = BudgetRegistry(config.budget.per_user_per_minute, config.budget.per_tenant_per_minute,
                                      config.budget.safety_margin_seconds, shared=shared)
        self.client = build_client(config, self.budgets, stop=self.stop_event, token_cache=tokens)
        self.source = ModelArtsSource(config, self.store, self.client, stop=self.stop_event)
        sinks = list(sink_factory(config)) if sink_factory else []
        if config.discovery.state_file is not None:
            self._load_state(config)
            sinks.append(StateFileSink(config.discovery.state_file))
        self.sink_set = SinkSet(sinks, self.store, self.stop_event)
        self.sinks = self.sink_set.runners
        # Latency-aware weights (lb.adaptive): EDS-only updates to the sinks that take them.
        self.adaptive = AdaptiveRunner(lambda: self.sink_set.sinks)
        try:
            self.admin = AdminServer(config.admin.address, config.admin.port, self.status, self.ready,
                                     self.not_ready_reason, self.store.refresh_staleness)
        except OSError as exc:  # the port is taken, or the address is not this host's: exit 2, not a traceback
            self.sink_set.close()
            raise ConfigError(f"cannot listen on {config.admin.address}:{config.admin.port} (admin.port): "
                              f"{exc.strerror or exc}") from None
        self._watcher = ConfigWatcher(config_path, self.reload) if config_path else None
        # Files rendered into Envoy config (API keys, JWKS): a change re-renders, no restart.
        self._rendered_files = FileWatcher(lambda _changed: self._republish())
        self._threads: list[threading.Thread] = []
        self._source_thread: threading.Thread | None = None
        self.started_at = time.time()
        POLLERS.runtimes.add(self)

    def _load_state(self, config: AgentConfig) -> None:
        assert config.discovery.state_file is not None
        ids = {spec.name: spec.service_id for spec in config.services}
        saved = load_state(config.discovery.state_file, ids, allowed_networks(config))
        if saved:
            self.store.load_last_known_good(saved)
            log.info("loaded last-known-good endpoints from the state file",
                     extra={"services": len(saved), "path": str(config.discovery.state_file)})

    def start(self) -> None:
        self.admin.start()
        self.sink_set.start()
        self.adaptive.apply(self.config)
        source_thread = threading.Thread(target=self.source.run, name="source-modelarts", daemon=True)
        source_thread.start()
        self._source_thread = source_thread
        self._threads.append(source_thread)
        if self._watcher:
            self._watcher.start()
        self._rendered_files.watch(rendered_files(self.config))
        log.info("agent started", extra={"services": len(self.config.services), "admin": self.admin.url})

    def stop(self) -> None:
        self.stop_event.set()
        if self._watcher:
            self._watcher.stop()
        self._rendered_files.stop()
        for thread in self._threads:
            thread.join(timeout=10)
        self.adaptive.stop()
        self.sink_set.join(timeout=10)
        self.admin.stop()
        log.info("agent stopped")

    def wait(self) -> None:
        while not self.stop_event.wait(1.0):
            pass

    def reload(self, config: AgentConfig) -> None:
        """Apply a new config without a restart. Changing ModelArts access or budgets needs one."""
        if config.modelarts != self.config.modelarts or config.auth != self.config.auth \
                or config.budget != self.config.budget:
            log.warning("modelarts/auth/budget changes take effect on restart; applying the rest")
        self.config = config
        self.store.set_specs(config.services, config.discovery)
        self.source.update_config(config)
        self.sink_set.apply_config(config)
        self.adaptive.apply(config)
        self._rendered_files.watch(rendered_files(config))

    def _republish(self) -> None:
        self.sink_set.republish()

    def poller_alive(self) -> bool:
        return self._source_thread is not None and self._source_thread.is_alive()

    def poller_states(self) -> list[tuple[str, bool]]:
        # A stopped agent has no poller to report (tests run several runtimes in one process).
        if self._source_thread is None or self.stop_event.is_set():
            return []
        return [("modelarts", self.poller_alive())]

    def ready(self) -> bool:
        """Synced data, and a poller that still runs (a dead one would serve it stale forever)."""
        return self.store.ready() and self.poller_alive()

    def not_ready_reason(self) -> str:
        if self._source_thread is not None and not self.poller_alive():
            return "the ModelArts poller has died (see the log)"
        return self.store.not_ready_reason()

    def status(self) -> dict[str, Any]:
        services = []
        for st in self.store.statuses():
            spec = next((s for s in self.config.services if s.name == st.name), None)
            entry = dict(st.__dict__)
            if spec is not None:
                entry["effective_poll_interval_seconds"] = round(self.source.effective_interval(spec), 2)
            snap = self.store.snapshot.services.get(st.name)
            entry["endpoints"] = [e.address for e in snap.endpoints] if snap else []
            # What `modelarts-agent endpoints` prints when it reads this agent's view instead of calling.
            entry["endpoint_details"] = [{"ip": e.ip, "port": e.port, "schema": e.schema}
                                         for e in snap.endpoints] if snap else []
            weights = self.adaptive.status_rows(spec) if spec is not None else None
            if weights is not None:
                entry["weights"] = weights
            services.append(entry)
        budgets = [budget.usage().__dict__ for budget in self.budgets.budgets()]
        return {
            "snapshot_version": self.store.snapshot.version,
            "ready": self.ready(),
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "services": services,
            "budgets": budgets,
            "modelarts": {"modelarts_url": self.config.modelarts.modelarts_url,
                          "project_id": self.config.modelarts.project_id},
            "poller": {"alive": self.poller_alive(),
                       "last_turn_age_seconds": None if self.source.last_turn is None else
                       round(time.monotonic() - self.source.last_turn, 1)},
            "sinks": self.sink_set.status(),
            "clock": SYSTEM_CLOCK.wall(),
            # The adaptive loop's health (ok, stale, blind, latched), while it runs.
            **({"adaptive": health} if (health := self.adaptive.health()) is not None else {}),
        }
