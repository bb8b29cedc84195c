"""`XdsSink` (name "xds"): publishes snapshots into the xDS cache that the ADS server serves from.

The same object works inside `AgentRuntime` (via `sinks_for`) and in any other owner of snapshots
(a controller): `publish` builds one new cache version and wakes every stream; `update_weights`
(adaptive LB) does the same with new endpoint weights, which changes EDS resources only; `start` / `close`
run the gRPC server. Without `start`, the cache can be served by a server the owner runs itself.
"""

from __future__ import annotations

import logging
import threading

from agent.config import DataPlaneConfig
from agent.envoy.clusters import EndpointWeights
from agent.errors import AgentError
from agent.model import Snapshot
from agent.sinks.xds.cache import XdsCache
from agent.sinks.xds.server import XdsServer
from agent.sinks.xds.session import AckListener
from agent.sinks.xds.tls import server_credentials
from agent.sinks.xds.views import ViewBuilder, build_view

log = logging.getLogger(__name__)


class XdsSink:
    name = "xds"

    def __init__(self, config: DataPlaneConfig, builder: ViewBuilder = build_view,
                 on_ack: AckListener | None = None) -> None:
        self._config = config
        self.cache = XdsCache(builder)
        self._on_ack = on_ack
        self.server: XdsServer | None = None
        # The last snapshot and weights, so either can change alone; the lock keeps a weight update from
        # re-publishing an older snapshot than a concurrent `publish`.
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._weights: EndpointWeights = {}

    def start(self) -> int:
        """Serve on `xds.address:xds.port` (TLS/mTLS per `xds.tls`); returns the bound port."""
        xds = self._config.xds
        self.server = XdsServer(self.cache, xds.address, xds.port, server_credentials(xds.tls), self._on_ack)
        try:
            return self.server.start()
        except Exception as exc:
            self.server = None
            raise AgentError(f"cannot serve xDS on {xds.address}:{xds.port}: {exc}") from None

    def close(self, grace: float = 1.0) -> None:
        if self.server is not None:
            self.server.stop(grace)
            self.server = None

    def update_config(self, config: DataPlaneConfig) -> None:
        """Hot reload: policies, splits and the gateway apply at the next publish; the port needs a restart."""
        if config.xds != self._config.xds:
            log.warning("xds.* changes (address, port, TLS) take effect on restart; applying the rest")
        self._config = config

    def publish(self, snapshot: Snapshot) -> None:
        with self._lock:
            version = self.cache.set_snapshot(snapshot, self._config, self._weights).version
            self._snapshot = snapshot
        log.debug("xDS cache updated", extra={"snapshot": snapshot.version, "cache_version": version})

    def update_weights(self, weights: EndpointWeights) -> None:
        """New adaptive weights: a new cache version whose only changed resources are EDS assignments."""
        with self._lock:
            self._weights = weights  # the cache keeps its own copy of what it serves
            if self._snapshot is None:
                return  # applied with the first snapshot
            version = self.cache.set_snapshot(self._snapshot, self._config, self._weights).version
        log.debug("xDS weights updated", extra={"cache_version": version})
