"""`Runtime`: one agent process that feeds Envoy, set up and torn down in one place.

It sets up, once, for every mode: the snapshot store, the sinks behind a `SinkSet` (plus the state
file when `discovery.state_file` is set), the adaptive runner, the admin server with the status page
(agent/app/status.py), the config-file watcher and reload, the watcher of files rendered into Envoy
config (API keys, JWKS) and start/stop. A preset is a subclass that brings the rest:

- `AgentRuntime` (agent/app/run.py, `modelarts-agent run`): one ModelArts poller.
- `SidecarRuntime` (agent/app/sidecar.py, `modelarts-agent sidecar`): one EndpointSlice watch per
  followed Service. The chart's gateway pods run this preset with xDS and `gateway` configured.

A preset implements `_make_sources` (called once the store and the stop event exist), may override
`_reconfigured` (a reloaded config reaching its sources), `facts` (its /status keys), `poll_interval`,
`budgets` and `_close` (what it holds besides, e.g. a Kubernetes client).

The controller's per-term pipeline is no preset: its lifecycle is the leader's term, it owns no
Envoy (no adaptive loop, no rendered files) and its status goes to the CRs. It uses the same pieces
(the store, `SinkRunner`, `Poller` as its sources); see agent/controller/pipeline.py.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

from agent.adaptive.runner import AdaptiveRunner
from agent.app.admin import AdminServer
from agent.app.status import status_page
from agent.config import DataPlaneConfig
from agent.envoy.auth import watched_files
from agent.errors import ConfigError
from agent.file_watch import ConfigWatcher, FileWatcher
from agent.sinks import Sink
from agent.sinks.runner import SinkSet
from agent.sinks.state_file import StateFileSink, load_state
from agent.snapshot import SnapshotStore
from agent.sources import Source
from agent.validation import parse_networks

log = logging.getLogger(__name__)

C = TypeVar("C", bound=DataPlaneConfig)  # the preset's config: `run` reads an AgentConfig, `sidecar` less
SinkFactory = Callable[[DataPlaneConfig], Sequence[Sink]]


def rendered_files(config: DataPlaneConfig) -> list[Path]:
    """Files whose content goes into Envoy config (API keys, JWKS): a change re-renders, no restart."""
    return [path for spec in config.services for path in watched_files(spec.auth)]


class Runtime(Generic[C]):
    mode = "agent"  # each preset names itself ("run", "sidecar"): /status `mode`

    def __init__(self, config: C, config_path: Path | None = None, *, loader: Callable[[Path], C],
                 sink_factory: SinkFactory | None = None) -> None:
        self.config = config  # what the sinks render (a sidecar's: with each CR's load balancing)
        self.stop_event = threading.Event()
        self.store = SnapshotStore(config.services, config.discovery)
        self._rendering = threading.Lock()  # one re-render at a time: a reload, a learned policy
        self._started = False
        try:
            self.sources: list[Source] = list(self._make_sources())
            sinks = list(sink_factory(config)) if sink_factory else []  # binds the xDS port now, when enabled
        except BaseException:
            self._close()
            raise
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
            self._close()
            raise ConfigError(f"cannot listen on {config.admin.address}:{config.admin.port} (admin.port): "
                              f"{exc.strerror or exc}") from None
        self._watcher = ConfigWatcher(config_path, self.reload, loader=loader) if config_path else None
        self._rendered_files = FileWatcher(lambda _changed: self.sink_set.republish())
        self.started_at = time.time()

    # -- what a preset supplies ----------------------------------------------------------------------

    def _make_sources(self) -> Sequence[Source]:
        raise NotImplementedError

    def _reconfigured(self, config: C) -> C:
        """A reloaded config reaches the sources; returns what the sinks render from now on."""
        self.store.set_specs(config.services, config.discovery)
        return config

    def facts(self) -> dict[str, Any]:
        """The mode's own /status keys; every preset sets the same ones (None where they do not apply)."""
        return {"modelarts": None, "kubernetes": None}

    def poll_interval(self, name: str) -> float | None:
        """How often the service is really polled (None: it is watched, not polled)."""
        return None

    def budgets(self) -> list[dict[str, Any]]:
        """ModelArts rate budgets this process spends ([]: it calls no ModelArts)."""
        return []

    def _close(self) -> None:
        """Release what the preset holds besides the sinks (called once, on stop or a failed start)."""

    # -- life cycle ----------------------------------------------------------------------------------

    def _load_state(self, config: C) -> None:
        assert config.discovery.state_file is not None
        ids = {spec.name: spec.discovery_id for spec in config.services}
        saved = load_state(config.discovery.state_file, ids, parse_networks(config.discovery.allowed_cidrs))
        if saved:
            self.store.load_last_known_good(saved)
            log.info("loaded last-known-good endpoints from the state file",
                     extra={"services": len(saved), "path": str(config.discovery.state_file)})

    def start(self) -> None:
        self.admin.start()
        self.sink_set.start()
        for source in self.sources:
            source.start()
        self._started = True
        self.adaptive.apply(self.config)
        if self._watcher:
            self._watcher.start()
        self._rendered_files.watch(rendered_files(self.config))
        log.info("agent started", extra={"mode": self.mode, "services": len(self.config.services),
                                         "admin": self.admin.url})

    def wait(self) -> None:
        while not self.stop_event.wait(1.0):
            pass

    def stop(self) -> None:
        self.stop_event.set()
        if self._watcher:
            self._watcher.stop()
        self._rendered_files.stop()
        for source in self.sources:
            source.stop()
        self.adaptive.stop()
        self.sink_set.join(timeout=10)
        self.sink_set.close()
        self.admin.stop()
        self._close()
        log.info("agent stopped")

    # -- changes at run time -------------------------------------------------------------------------

    def reload(self, config: C) -> None:
        """Apply a new config without a restart (the config watcher calls this)."""
        with self._rendering:
            self.config = self._reconfigured(config)
            self.sink_set.apply_config(self.config)
        self.adaptive.apply(self.config)
        self._rendered_files.watch(rendered_files(self.config))

    def render(self, update: Callable[[C], C]) -> None:
        """Re-render with a policy learned at run time (a CR's load balancing read from its slices)."""
        with self._rendering:
            self.config = update(self.config)
            self.sink_set.apply_config(self.config)

    # -- the admin endpoint --------------------------------------------------------------------------

    def dead_source(self) -> Source | None:
        """A started source whose thread has ended (its services would turn stale forever)."""
        if not self._started:
            return None
        return next((source for source in self.sources if not source.alive()), None)

    def sources_alive(self) -> bool:
        """Started, and every source's thread still runs."""
        return self._started and self.dead_source() is None

    def ready(self) -> bool:
        """Synced data, and sources that still run (a dead one would serve its data stale forever)."""
        return self.store.ready() and self.sources_alive()

    def not_ready_reason(self) -> str:
        dead = self.dead_source()
        if dead is not None:
            return f"{dead.description} has died (see the log)"
        return self.store.not_ready_reason()

    def status(self) -> dict[str, Any]:
        return status_page(self)
