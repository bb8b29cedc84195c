"""Watch a set of files (watchdog) and call back when any one's content changes.

Used for files whose content is rendered into Envoy config (API keys, JWKS): a change means a
re-render, with no restart. Kubernetes rotates mounted Secrets by swapping a symlink, so we
watch directories and compare contents rather than trusting event types.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

log = logging.getLogger(__name__)


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class FileWatcher(FileSystemEventHandler):
    def __init__(self, on_change: Callable[[list[Path]], None], debounce_seconds: float = 0.2) -> None:
        self._on_change = on_change
        self._debounce = debounce_seconds
        self._lock = threading.Lock()
        self._digests: dict[Path, str | None] = {}
        self._observer: BaseObserver | None = None
        self._timer: threading.Timer | None = None

    def watch(self, paths: Iterable[Path]) -> None:
        """(Re)start watching exactly these files."""
        wanted = {p.resolve() for p in paths}
        with self._lock:
            if wanted == set(self._digests):
                return
            self._stop_observer()
            self._digests = {p: _digest(p) for p in wanted}
            if not wanted:
                return
            observer = Observer()
            for directory in sorted({p.parent for p in wanted}):
                if directory.is_dir():
                    observer.schedule(self, str(directory), recursive=False)
            observer.daemon = True
            observer.start()
            self._observer = observer

    def stop(self) -> None:
        with self._lock:
            self._stop_observer()
            if self._timer:
                self._timer.cancel()

    def _stop_observer(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None

    def on_any_event(self, event: FileSystemEvent) -> None:
        with self._lock:
            if self._timer:
                self._timer.cancel()
            self._timer = threading.Timer(self._debounce, self.check)
            self._timer.daemon = True
            self._timer.start()

    def check(self) -> list[Path]:
        with self._lock:
            changed = []
            for path, old in self._digests.items():
                new = _digest(path)
                if new != old:
                    self._digests[path] = new
                    changed.append(path)
        if changed:
            log.info("watched files changed; re-rendering", extra={"files": [str(p) for p in changed]})
            self._on_change(changed)
        return changed
