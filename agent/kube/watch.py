"""A reflector: keeps a local copy of one collection (list, then watch), the core of client-go's informers.

Watches end all the time (server timeout, apiserver restart, broken connection). The reflector
resumes from the last resourceVersion it saw; when that version is too old (410 Gone, from the
stream or the request) it lists again. Failures back off exponentially up to a few seconds, so
an apiserver restart costs a few seconds of staleness and nothing else.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Mapping
from typing import Any

from agent.kube.client import KubeApiError, KubeClient
from agent.kube.metrics import K8S_WATCH_RESTARTS
from agent.loops import FailureLog

log = logging.getLogger(__name__)

Objects = Mapping[str, dict[str, Any]]


def object_key(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


class Reflector:
    def __init__(self, kube: KubeClient, path: str, name: str, on_change: Callable[[Objects], None],
                 stop: threading.Event, *, label_selector: str | None = None, field_selector: str | None = None,
                 timeout_seconds: int = 60, max_backoff: float = 5.0) -> None:
        self._kube = kube
        self._path = path
        self.name = name
        self._on_change = on_change
        self._stop = stop
        self._label_selector = label_selector
        self._field_selector = field_selector
        self._timeout = timeout_seconds
        self._max_backoff = max_backoff
        self._items: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._rng = random.Random()
        self.synced = threading.Event()
        self.last_error: str | None = None
        self._crashes = FailureLog(log, f"watch {name}")
        self._handler_failures = FailureLog(log, f"watch handler {name}")
        self.thread = threading.Thread(target=self.run, name=f"watch-{name}", daemon=True)

    def start(self) -> Reflector:
        self.thread.start()
        return self

    def items(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return dict(self._items)

    def run(self) -> None:
        resource_version: str | None = None
        delay = 0.25
        while not self._stop.is_set():
            try:
                if resource_version is None:
                    resource_version = self._relist()
                resource_version = self._watch(resource_version)
                delay = 0.25
            except KubeApiError as exc:
                if exc.status == 410:
                    # Our resourceVersion was compacted away: start over from a fresh list.
                    K8S_WATCH_RESTARTS.labels(self.name, "gone").inc()
                    log.info("watch expired (410 Gone); relisting", extra={"watch": self.name})
                    resource_version = None
                    continue
                self._backoff(exc.reason, str(exc), delay)
                delay = min(delay * 2, self._max_backoff)
            except Exception as exc:  # a bug or a malformed answer: never let the thread die
                # Relist afterwards: the local copy may be half-updated by whatever broke.
                resource_version = None
                self._crashes.failed(exc, watch=self.name)
                self._backoff("error", f"{type(exc).__name__}: {exc}", delay, logged=True)
                delay = min(delay * 2, self._max_backoff)

    def _backoff(self, reason: str, message: str, delay: float, logged: bool = False) -> None:
        K8S_WATCH_RESTARTS.labels(self.name, reason).inc()
        if self.last_error != message and not logged:
            log.warning("watch interrupted, retrying: %s", message, extra={"watch": self.name})
        self.last_error = message
        self._stop.wait(delay / 2 + self._rng.uniform(0, delay / 2))

    def _relist(self) -> str:
        items, resource_version = self._kube.list(self._path, self._label_selector, self._field_selector)
        with self._lock:
            self._items = {object_key(obj): obj for obj in items}
        self._notify()
        self.synced.set()
        self.last_error = None
        return resource_version

    def _watch(self, resource_version: str) -> str:
        # Spread the server-side timeouts so many watchers don't all reconnect at once.
        timeout = int(self._timeout * self._rng.uniform(0.8, 1.2))
        for event in self._kube.watch(self._path, resource_version, label_selector=self._label_selector,
                                      field_selector=self._field_selector, timeout_seconds=timeout):
            if self._stop.is_set():
                break
            kind = event.get("type")
            obj = event.get("object") or {}
            if kind == "ERROR":
                code = int(obj.get("code") or 0)
                raise KubeApiError(code, str(obj.get("reason") or "WatchError"),
                                   str(obj.get("message") or "watch error"))
            resource_version = str((obj.get("metadata") or {}).get("resourceVersion") or resource_version)
            if kind == "BOOKMARK":
                continue
            with self._lock:
                if kind == "DELETED":
                    self._items.pop(object_key(obj), None)
                else:
                    self._items[object_key(obj)] = obj
            self.last_error = None
            self._notify()
        return resource_version

    def _notify(self) -> None:
        try:
            self._on_change(self.items())
        except Exception as exc:  # the handler's bug: the watch goes on, the next change calls it again
            self._handler_failures.failed(exc, watch=self.name)
        else:
            self._handler_failures.recovered()
