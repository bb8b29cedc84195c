"""Watches the agent's own config file and hands each valid new version to a callback.

The watching itself (the kubelet's `..data` symlink swap, editors' renames, the debounce and the
retries) is `agent.file_watch.FileWatcher`'s. An invalid new file is logged and ignored: the
running config stays. A callback that raises is retried by the watcher with a growing pause.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from agent.config import AgentConfig, load_config
from agent.errors import ConfigError
from agent.file_watch import FileWatcher
from agent.metrics import CONFIG_RELOADS

log = logging.getLogger(__name__)


class ConfigWatcher:
    def __init__(self, path: Path, on_change: Callable[[AgentConfig], None], debounce_seconds: float = 0.2) -> None:
        self._path = path
        self._on_change = on_change
        self._files = FileWatcher(self._changed, debounce_seconds, name="config")
        self.applied = False

    def start(self) -> None:
        self._files.watch([self._path])

    def stop(self) -> None:
        self._files.stop()

    def check(self) -> bool:
        """Reload now if the content changed; True if a new config was applied."""
        self.applied = False
        self._files.check()
        return self.applied

    def _changed(self, _paths: list[Path]) -> None:
        if not self._path.exists():
            return  # gone for a moment (an editor's delete-then-write): its return is the change
        try:
            config = load_config(self._path)
        except ConfigError as exc:
            CONFIG_RELOADS.labels("invalid").inc()
            log.error("new config rejected; keeping the running one: %s", exc)
            return
        try:
            self._on_change(config)
        except Exception:
            CONFIG_RELOADS.labels("error").inc()
            raise  # the watcher logs it with its traceback and retries
        CONFIG_RELOADS.labels("success").inc()
        self.applied = True
        log.info("config reloaded", extra={"services": len(config.services)})
