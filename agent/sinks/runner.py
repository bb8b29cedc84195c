"""Runs one sink: publishes every new snapshot version, retrying failures with the newest one.

`republish()` asks for a publication even when the snapshot did not change (a reload that only
changed splits, the gateway, the stats port or a rotated API-key/JWKS file). Requests are counted
by a generation number, read before each publication: a request that arrives while a publication
is in flight bumps the generation past the one being published, so it is served by one more
publication instead of being overwritten by the in-flight one's success.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from agent.loops import FailureLog, backoff_seconds
from agent.metrics import SINK_WRITES
from agent.sinks import Closable, Reconfigurable, Sink
from agent.snapshot import SnapshotStore

if TYPE_CHECKING:
    from agent.config import DataPlaneConfig

log = logging.getLogger(__name__)


class SinkRunner:
    def __init__(self, sink: Sink, store: SnapshotStore, stop: threading.Event, retry_seconds: float = 2.0,
                 max_retry_seconds: float = 10.0) -> None:
        self.sink = sink
        self._store = store
        self._stop = stop
        self._retry = retry_seconds
        self._max_retry = max(retry_seconds, max_retry_seconds)
        self.published_version = 0
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._wanted = 0  # generation: bumped by every republish()
        self._published_generation = 0  # the generation the last successful publication served
        self._failures = FailureLog(log, f"sink {sink.name}")
        self.thread = threading.Thread(target=self._loop, name=f"sink-{sink.name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def republish(self) -> None:
        """Publish again even if the version did not change (e.g. the policy part of the config changed)."""
        with self._lock:
            self._wanted += 1
        self._store.nudge()

    def pending(self) -> bool:
        """Whether a republish request has not been served by a successful publication yet."""
        with self._lock:
            return self._wanted != self._published_generation

    def _loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                if self._step():
                    failures = 0
                    self._failures.recovered()
            except Exception as exc:  # a sink bug must not end publication for good; the old output stays
                failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                SINK_WRITES.labels(self.sink.name, "error").inc()
                self._failures.failed(exc, sink=self.sink.name, failures=failures)
                # Exponential, bounded: a broken sink is retried every 10 s at most, never in a busy loop.
                self._stop.wait(backoff_seconds(failures, self._retry, self._max_retry))

    def _step(self) -> bool:
        """Publish once if there is something to publish; True after a successful publication."""
        with self._lock:
            generation = self._wanted
        if generation == self._published_generation:
            snapshot = self._store.wait_for_change(self.published_version, timeout=0.5, until=self.pending)
            with self._lock:
                generation = self._wanted
        else:
            snapshot = self._store.snapshot
        if self._stop.is_set():
            return False
        if snapshot.version == self.published_version and generation == self._published_generation:
            return False
        self.sink.publish(snapshot)
        self.last_error = None
        self.published_version = snapshot.version
        with self._lock:
            self._published_generation = generation
        SINK_WRITES.labels(self.sink.name, "success").inc()
        log.info("published snapshot", extra={"sink": self.sink.name, "version": snapshot.version})
        return True


class SinkSet:
    """The sinks of one process, each behind its `SinkRunner`: what `run` and `sidecar` both need."""

    def __init__(self, sinks: Sequence[Sink], store: SnapshotStore, stop: threading.Event) -> None:
        self.sinks = list(sinks)
        self.runners = [SinkRunner(sink, store, stop) for sink in self.sinks]

    def start(self) -> None:
        for runner in self.runners:
            runner.start()

    def join(self, timeout: float) -> None:
        for runner in self.runners:
            runner.thread.join(timeout)

    def apply_config(self, config: DataPlaneConfig) -> None:
        """A reloaded config (or a learned policy): every sink that takes one renders with it, then all republish."""
        for sink in self.sinks:
            if isinstance(sink, Reconfigurable):
                sink.update_config(config)
        self.republish()

    def republish(self) -> None:
        for runner in self.runners:
            runner.republish()

    def close(self) -> None:
        for sink in self.sinks:
            if isinstance(sink, Closable):
                sink.close()

    def status(self) -> list[dict[str, Any]]:
        return [{"name": r.sink.name, "published_version": r.published_version, "last_error": r.last_error}
                for r in self.runners]
