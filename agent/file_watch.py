"""Watch files by the path they were given and call back when any one's content changes.

Used for the agent's config (`ConfigWatcher`: each valid new version goes to a callback; an invalid
one is logged and ignored, the running config stays) and for files rendered into Envoy config
(API keys, JWKS).

Kubernetes mounts a ConfigMap or Secret like this (the kubelet's AtomicWriter):

    dir/..2026_12_01_10_00_00.123/file    the data
    dir/..data -> ..2026_12_01_10_00_00.123
    dir/file -> ..data/file

and updates it by writing a new timestamped directory, renaming a `..data_tmp` symlink over
`..data` and deleting the old directory. No event ever names `dir/file`, and a resolved path
points into a directory that the next update deletes. So the path is never resolved once: we
watch the directory that holds it as given (plus the directory its target is in now, when that
is elsewhere), take only the events that name a watched file or one of the kubelet's `..` entries
(so a log file in the same folder costs nothing), and after each burst re-read every file through
its path, which follows the symlinks anew, and compare contents.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Generic, overload

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.utils import BaseThread

from agent.config import AgentConfig, Config, load_config
from agent.errors import ConfigError
from agent.metrics import CONFIG_RELOADS

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 60.0


class _StoppedEmitterFilter(logging.Filter):
    """Drops watchdog's ERROR "queue_events() called when the thread is inactive".

    Its emitter thread checks "keep running?" and then reads its inotify handle, which `stop()`
    (on our thread) clears in between when events are flowing: about 1 stop in 15. The thread then
    ends as asked; nothing failed. Dropped only when logged from an emitter that was told to stop.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        thread = threading.current_thread()  # filters run on the logging thread: the emitter's
        stopped = isinstance(thread, BaseThread) and not thread.should_keep_running()
        return not (stopped and "called when the thread is inactive" in str(record.msg))


logging.getLogger("watchdog.observers.inotify").addFilter(_StoppedEmitterFilter())


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _absolute(path: Path) -> Path:
    # Absolute but NOT resolved: the symlinks are followed on every read, never cached.
    return Path(os.path.abspath(path))


def _target(path: Path) -> Path | None:
    try:
        return path.resolve(strict=True)
    except (OSError, RuntimeError):
        return None


class FileWatcher(FileSystemEventHandler):
    """Calls `on_change(changed paths)` after the content of watched files changes (debounced).

    The callback runs on a timer thread. If it raises, the error is logged once with its traceback
    and the change is retried with a growing pause until it succeeds or the files change again.
    After `stop()` returns, no callback runs.
    """

    def __init__(self, on_change: Callable[[list[Path]], None], debounce_seconds: float = 0.2,
                 name: str = "files") -> None:
        self._on_change = on_change
        self._debounce = debounce_seconds
        self._name = name
        self._state = threading.Lock()  # digests, timer, relevant names: held briefly, never around watchdog
        self._control = threading.Lock()  # the observer's lifecycle
        self._callback = threading.Lock()  # one callback at a time; stop() waits for the running one
        self._stopped = False
        self._paths: tuple[Path, ...] = ()
        self._digests: dict[Path, str | None] = {}
        self._relevant: dict[str, set[str]] = {}  # watched directory -> names in it that matter
        self._kubelet_dirs: set[str] = set()  # directories whose `..` entries matter
        self._scheduled: frozenset[str] = frozenset()
        self._observer: BaseObserver | None = None
        self._timer: threading.Timer | None = None
        self._failures = 0
        self._event_error_logged = False

    # --- lifecycle -------------------------------------------------------------------------------

    def watch(self, paths: Iterable[Path]) -> None:
        """(Re)start watching exactly these files."""
        wanted = tuple(sorted({_absolute(p) for p in paths}))
        with self._state:
            if self._stopped or wanted == self._paths:
                return
            self._paths = wanted
            self._digests = {p: _digest(p) for p in wanted}
        self._reschedule()

    def stop(self) -> None:
        with self._state:
            self._stopped = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        with self._control:
            observer, self._observer = self._observer, None
            self._scheduled = frozenset()
        if observer is not None:
            # Handlers return at once now (stopped), so nothing holds the observer's lock for long.
            observer.stop()
            observer.join(timeout=5)
        with self._callback:
            pass  # a callback that was already running has finished

    def _layout(self) -> tuple[dict[str, set[str]], set[str]]:
        """The directories to watch and, in each, the names whose events matter."""
        relevant: dict[str, set[str]] = {}
        kubelet: set[str] = set()
        for path in self._paths:
            relevant.setdefault(str(path.parent), set()).add(path.name)
            kubelet.add(str(path.parent))
            target = _target(path)
            # A symlink into another directory (not the kubelet's own `..` entries beside it).
            if target is not None and target != path and not target.is_relative_to(path.parent):
                relevant.setdefault(str(target.parent), set()).add(target.name)
        return relevant, kubelet

    def _reschedule(self) -> None:
        """Watch the directories the current layout needs; called at start and after each change."""
        with self._control:
            with self._state:
                if self._stopped:
                    return
                relevant, kubelet = self._layout()
                self._relevant, self._kubelet_dirs = relevant, kubelet
            dirs = frozenset(d for d in relevant if os.path.isdir(d))
            if dirs == self._scheduled and (self._observer is not None or not dirs):
                return
            old, self._observer = self._observer, None
            if old is not None:
                old.stop()
                old.join(timeout=5)
            self._scheduled = dirs
            if not dirs:
                return
            observer = Observer()
            for directory in sorted(dirs):
                observer.schedule(self, directory, recursive=False)
            observer.daemon = True
            observer.start()
            self._observer = observer

    # --- events ----------------------------------------------------------------------------------

    def _matters(self, raw: str | bytes) -> bool:
        path = os.fsdecode(raw)
        directory, name = os.path.split(path)
        if name in self._relevant.get(directory, ()):
            return True
        return name.startswith("..") and directory in self._kubelet_dirs

    def on_any_event(self, event: FileSystemEvent) -> None:
        # Runs on watchdog's thread: an exception here would end it, and with it the watching.
        try:
            with self._state:
                if self._stopped:
                    return
                if not (self._matters(event.src_path) or (event.dest_path and self._matters(event.dest_path))):
                    return
                self._arm(self._debounce)
        except Exception:
            if not self._event_error_logged:  # once: a broken handler would otherwise log every event
                self._event_error_logged = True
                log.exception("file watcher (%s): could not handle a file event", self._name)

    def _arm(self, delay: float) -> None:
        """Run `_fire` after `delay`, replacing a pending run (caller holds `_state`)."""
        if self._timer is not None:
            self._timer.cancel()
        timer = threading.Timer(delay, self._fire)
        timer.name = f"file-watch-{self._name}"
        timer.daemon = True
        timer.start()
        self._timer = timer

    def _fire(self) -> None:
        try:
            self.check()
        except Exception:
            with self._state:
                self._failures += 1
                failures = self._failures
                delay = min(MAX_BACKOFF_SECONDS, self._debounce * 2 ** min(failures, 16))
                if not self._stopped:
                    self._arm(delay)
            if failures == 1:
                log.exception("file watcher (%s): handling a change failed; retrying in %.1f s", self._name, delay)
            else:
                log.debug("file watcher (%s): retry %d failed; next in %.1f s", self._name, failures, delay)
            return
        with self._state:
            if self._failures:
                log.info("file watcher (%s): change handled after %d failed attempts", self._name, self._failures)
            self._failures = 0

    def check(self) -> list[Path]:
        """Re-read every watched file through its path; call back with those whose content changed."""
        with self._callback:
            with self._state:
                if self._stopped:
                    return []
                current = {path: _digest(path) for path in self._digests}
                changed = [path for path, digest in current.items() if digest != self._digests[path]]
            # A ..data swap, or a symlink that now points elsewhere: follow the new layout.
            self._reschedule()
            if not changed:
                return []
            log.info("watched files changed", extra={"watcher": self._name, "files": [str(p) for p in changed]})
            self._on_change(changed)
            # Only a change that was handled counts as seen; a failed one is retried.
            with self._state:
                for path in changed:
                    if path in self._digests:
                        self._digests[path] = current[path]
            return changed


class ConfigWatcher(Generic[Config]):
    """The agent's own config file: a `FileWatcher` on it that parses each new version first."""

    @overload
    def __init__(self: ConfigWatcher[AgentConfig], path: Path, on_change: Callable[[AgentConfig], None],
                 debounce_seconds: float = ...) -> None: ...

    @overload
    def __init__(self, path: Path, on_change: Callable[[Config], None], debounce_seconds: float = ..., *,
                 loader: Callable[[Path], Config]) -> None: ...

    def __init__(self, path: Path, on_change: Callable[[Any], None], debounce_seconds: float = 0.2,
                 loader: Callable[[Path], Any] = load_config) -> None:
        self._path = path
        self._on_change: Callable[[Config], None] = on_change
        self._load: Callable[[Path], Config] = loader  # `sidecar` reads its own config shape (DataPlaneConfig)
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
            config = self._load(self._path)
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
