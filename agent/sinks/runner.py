"""Runs one sink: publishes every new snapshot version, retrying failures with the newest one."""

from __future__ import annotations

import logging
import threading

from agent.metrics import SINK_WRITES
from agent.sinks import Sink
from agent.snapshot import SnapshotStore

log = logging.getLogger(__name__)


class SinkRunner:
    def __init__(self, sink: Sink, store: SnapshotStore, stop: threading.Event, retry_seconds: float = 2.0) -> None:
        self.sink = sink
        self._store = store
        self._stop = stop
        self._retry = retry_seconds
        self.published_version = 0
        self.last_error: str | None = None
        self._kick = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"sink-{sink.name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def republish(self) -> None:
        """Publish again even if the version did not change (e.g. the policy part of the config changed)."""
        self.published_version = -1
        self._kick.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            snapshot = self._store.wait_for_change(self.published_version, timeout=0.5) \
                if self.published_version >= 0 else self._store.snapshot
            if self._stop.is_set():
                return
            if snapshot.version == self.published_version:
                continue
            try:
                self.sink.publish(snapshot)
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                SINK_WRITES.labels(self.sink.name, "error").inc()
                log.error("sink failed; previous output stays in place: %s", self.last_error,
                          extra={"sink": self.sink.name, "version": snapshot.version})
                self._stop.wait(self._retry)
                continue
            self.last_error = None
            self.published_version = snapshot.version
            SINK_WRITES.labels(self.sink.name, "success").inc()
            log.info("published snapshot", extra={"sink": self.sink.name, "version": snapshot.version})
