"""Watches the agent's own config file (watchdog) and hands each valid new version to a callback.

Kubernetes updates a mounted ConfigMap by swapping a symlink, so we watch the directory and
compare file contents rather than trusting event types. An invalid new file is logged and
ignored: the running config stays.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from agent.config import AgentConfig, load_config
from agent.errors import ConfigError
from agent.metrics import CONFIG_RELOADS

log = logging.getLogger(__name__)


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class ConfigWatcher(FileSystemEventHandler):
    def __init__(self, path: Path, on_change: Callable[[AgentConfig], None], debounce_seconds: float = 0.2) -> None:
        self._path = path
        self._on_change = on_change
        self._debounce = debounce_seconds
        self._digest = _digest(path)
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self._observer = Observer()

    def start(self) -> None:
        self._observer.schedule(self, str(self._path.resolve().parent), recursive=False)
        self._observer.daemon = True
        self._observer.start()

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=5)
        with self._lock:
            if self._timer:
                self._timer.cancel()

    def on_any_event(self, event: FileSystemEvent) -> None:
        # Editors and kubelet write in several steps; reload once things settle.
        with self._lock:
            if self._timer:
                self._timer.cancel()
            self._timer = threading.Timer(self._debounce, self.check)
            self._timer.daemon = True
            self._timer.start()

    def check(self) -> bool:
        """Reload if the content changed; True if a new config was applied."""
        digest = _digest(self._path)
        if digest is None or digest == self._digest:
            return False
        self._digest = digest
        try:
            config = load_config(self._path)
        except ConfigError as exc:
            CONFIG_RELOADS.labels("invalid").inc()
            log.error("new config rejected; keeping the running one: %s", exc)
            return False
        try:
            self._on_change(config)
        except Exception as exc:
            CONFIG_RELOADS.labels("error").inc()
            log.error("applying the new config failed: %s: %s", type(exc).__name__, exc)
            return False
        CONFIG_RELOADS.labels("success").inc()
        log.info("config reloaded", extra={"services": len(config.services)})
        return True
