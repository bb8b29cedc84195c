"""The /status page: one shape for every mode (`run`, `sidecar`, the gateway).

Every mode has the same top-level keys, and every service entry the same keys:

    mode, snapshot_version, ready, uptime_seconds, clock
    services[]   the store's SyncStatus fields + endpoints, endpoint_details,
                 effective_poll_interval_seconds (None when watched, not polled), weights (while adaptive)
    sources[]    each Source's status (name, kind, alive, last_error, ...)
    poller       all sources together: alive, last_turn_age_seconds (None when no source polls)
    budgets[]    the ModelArts rate budgets this process spends ([] when it calls no ModelArts)
    sinks[]      each sink's published version and last error
    modelarts    `run`: the ModelArts URL and project (`endpoints` reads it); None otherwise
    kubernetes   `sidecar`: the namespace and each watch's last error; None otherwise

plus `adaptive` while the feedback loop runs and `xds` while this process serves xDS.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from agent.clock import SYSTEM_CLOCK

if TYPE_CHECKING:
    from agent.adaptive.runner import AdaptiveRunner
    from agent.config import DataPlaneConfig
    from agent.sinks.runner import SinkSet
    from agent.sinks.xds.sink import XdsSink
    from agent.snapshot import SnapshotStore
    from agent.sources import Source


class Reported(Protocol):
    """What the page reads of a running agent (agent.app.runtime.Runtime)."""

    mode: str
    started_at: float
    store: SnapshotStore
    sink_set: SinkSet
    adaptive: AdaptiveRunner

    @property
    def config(self) -> DataPlaneConfig: ...

    @property
    def sources(self) -> Sequence[Source]: ...

    def ready(self) -> bool: ...

    def sources_alive(self) -> bool: ...

    def budgets(self) -> list[dict[str, Any]]: ...

    def facts(self) -> dict[str, Any]: ...

    def poll_interval(self, name: str) -> float | None: ...


def status_page(runtime: Reported) -> dict[str, Any]:
    config = runtime.config
    sources = [source.status() for source in runtime.sources]
    ages = [s["last_turn_age_seconds"] for s in sources if s.get("last_turn_age_seconds") is not None]
    page: dict[str, Any] = {
        "mode": runtime.mode,
        "snapshot_version": runtime.store.snapshot.version,
        "ready": runtime.ready(),
        "uptime_seconds": round(time.time() - runtime.started_at, 1),
        "services": service_entries(runtime),
        "sources": sources,
        "poller": {"alive": runtime.sources_alive(),
                   "last_turn_age_seconds": max(ages) if ages else None},
        "budgets": runtime.budgets(),
        "sinks": runtime.sink_set.status(),
        "clock": SYSTEM_CLOCK.wall(),
        **runtime.facts(),
    }
    # The adaptive loop's health (ok, stale, blind, latched), while it runs.
    if (health := runtime.adaptive.health()) is not None:
        page["adaptive"] = health
    xds = next((sink for sink in runtime.sink_set.sinks if sink.name == "xds"), None)
    if xds is not None:
        page["xds"] = xds_status(xds, config)  # type: ignore[arg-type]
    return page


def service_entries(runtime: Reported) -> list[dict[str, Any]]:
    policies = {spec.name: spec for spec in runtime.config.services}
    snapshot = runtime.store.snapshot
    entries = []
    for st in runtime.store.statuses():
        entry: dict[str, Any] = dict(st.__dict__)
        interval = runtime.poll_interval(st.name)
        entry["effective_poll_interval_seconds"] = None if interval is None else round(interval, 2)
        svc = snapshot.services.get(st.name)
        endpoints = svc.endpoints if svc is not None else ()
        entry["endpoints"] = [e.address for e in endpoints]
        # What `modelarts-agent endpoints` prints when it reads this agent's view instead of calling.
        entry["endpoint_details"] = [{"ip": e.ip, "port": e.port, "schema": e.schema} for e in endpoints]
        spec = policies.get(st.name)
        weights = runtime.adaptive.status_rows(spec) if spec is not None else None
        if weights is not None:
            entry["weights"] = weights
        entries.append(entry)
    return entries


def xds_status(sink: XdsSink, config: DataPlaneConfig) -> dict[str, Any]:
    """Where the xDS server listens, the cache version it serves and how many Envoy streams are open."""
    server = sink.server
    current = sink.cache.current
    return {"address": config.xds.address, "port": server.port if server is not None else None,
            "tls": config.xds.tls.cert_file is not None, "serving": server is not None,
            "cache_version": current.version if current is not None else 0,
            "streams": server.stream_count if server is not None else 0}
