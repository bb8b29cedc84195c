"""The versioned resource cache the ADS server serves from (the idea of go-control-plane's snapshot cache).

`XdsCache.set_snapshot(snapshot, config, weights)` makes a new immutable `CacheSnapshot` with a higher
version (adaptive weights are part of it: a new weight is a new version whose only change is EDS).
Per-node views are built from it on first use (and, for views that streams are using,
eagerly by the publishing thread, so the server's event loop rarely builds anything); each
resource inside is serialized once and shared by every stream of that view. Watchers (the server)
are told after the swap, and each stream then works out what its Envoy is missing.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable

from agent.config import DataPlaneConfig
from agent.envoy.clusters import EndpointWeights
from agent.envoy.nodes import ALL, NodeView
from agent.model import Snapshot
from agent.sinks.xds.metrics import CACHE_VERSION
from agent.sinks.xds.resource import Built, BuiltIndex, Resource, ResourcePool
from agent.sinks.xds.views import ViewBuilder, ViewResources, build_view, config_file_digests

log = logging.getLogger(__name__)

Watcher = Callable[["CacheSnapshot"], None]


class CacheSnapshot:
    """One version of everything served. Immutable once made, apart from the memo of built views."""

    def __init__(self, version: int, snapshot: Snapshot, config: DataPlaneConfig, builder: ViewBuilder,
                 reuse: dict[tuple[str, str, str], Resource], weights: EndpointWeights | None = None,
                 built: BuiltIndex | None = None) -> None:
        self.version = version
        self.snapshot = snapshot
        self.config = config
        self.weights: EndpointWeights = weights or {}
        self._builder = builder
        self._reuse = reuse
        self._built = built or {}  # the previous version's per-service builds, reused where unchanged
        self.files = config_file_digests(config)  # rotated API keys / JWKS are a change, like the config
        self._views: dict[NodeView, ViewResources] = {}
        self._lock = threading.Lock()

    def view(self, node_view: NodeView) -> ViewResources:
        built = self._views.get(node_view)
        if built is not None:
            return built
        with self._lock:  # one build per view, whichever thread asks first
            built = self._views.get(node_view)
            if built is None:
                built = self._builder(self.snapshot, self.config, node_view, ResourcePool(self._reuse, self._built),
                                      self.weights or None)
                self._views[node_view] = built
            return built

    def resource_index(self) -> dict[tuple[str, str, str], Resource]:
        """Every resource built so far, for the next version to reuse unchanged ones."""
        with self._lock:
            views = list(self._views.values())
        index: dict[tuple[str, str, str], Resource] = {}
        for built in views:
            index.update(built.index)
        return index

    def built_index(self) -> BuiltIndex:
        """Every per-service build made or reused by this version's views (and nothing older)."""
        with self._lock:
            views = list(self._views.values())
        index: dict[str, tuple[Built, ...]] = {}
        for view in views:
            for name, entries in view.built.items():
                known = index.get(name, ())
                index[name] = (*known, *(e for e in entries if e not in known))
        return index


class XdsCache:
    def __init__(self, builder: ViewBuilder = build_view) -> None:
        self._builder = builder
        self._lock = threading.Lock()
        self._publishing = threading.Lock()  # one publisher at a time keeps versions in order
        self._current: CacheSnapshot | None = None
        self._version = 0
        self._watchers: list[Watcher] = []
        self._in_use: Counter[NodeView] = Counter()

    @property
    def current(self) -> CacheSnapshot | None:
        return self._current

    def set_snapshot(self, snapshot: Snapshot, config: DataPlaneConfig,
                     weights: EndpointWeights | None = None) -> CacheSnapshot:
        """Make and publish a new version; raises (keeping the current one) if a view cannot be built."""
        frozen = {name: dict(per) for name, per in (weights or {}).items()}
        with self._publishing:
            previous = self._current
            if (previous is not None and previous.snapshot == snapshot and previous.config == config
                    and previous.weights == frozen and previous.files == config_file_digests(config)):
                return previous
            candidate = CacheSnapshot(self._version + 1, snapshot, config, self._builder,
                                      previous.resource_index() if previous is not None else {}, frozen,
                                      previous.built_index() if previous is not None else None)
            for node_view in {ALL, *self.views_in_use()}:
                candidate.view(node_view)  # errors surface here, in the publisher, not in the streams
            with self._lock:
                self._version = candidate.version
                self._current = candidate
                watchers = list(self._watchers)
            CACHE_VERSION.set(candidate.version)
        for watcher in watchers:
            try:
                watcher(candidate)
            except Exception:
                log.exception("xDS cache watcher failed")
        return candidate

    def watch(self, watcher: Watcher) -> Callable[[], None]:
        with self._lock:
            self._watchers.append(watcher)

        def cancel() -> None:
            with self._lock:
                if watcher in self._watchers:
                    self._watchers.remove(watcher)

        return cancel

    def acquire(self, node_view: NodeView) -> None:
        """A stream serves this view: build it eagerly for every future version."""
        with self._lock:
            self._in_use[node_view] += 1

    def release(self, node_view: NodeView) -> None:
        with self._lock:
            self._in_use[node_view] -= 1
            if self._in_use[node_view] <= 0:
                del self._in_use[node_view]

    def views_in_use(self) -> list[NodeView]:
        with self._lock:
            return list(self._in_use)
