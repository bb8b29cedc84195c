"""The snapshot store: last-known-good rules, then one immutable versioned snapshot for all sinks.

Sources report what they saw; the store decides what is believed. A failed, malformed or
suspicious poll never replaces good data: it only changes the per-service sync status.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from prometheus_client import Gauge

from agent.clock import SYSTEM_CLOCK, Clock
from agent.config import DiscoveryConfig, ServicePolicy
from agent.errors import DiscoveryError
from agent.metrics import ENDPOINTS, LAST_SUCCESS, RATE_LIMITED, SNAPSHOT_VERSION, STALE
from agent.model import EMPTY_SNAPSHOT, Endpoint, ServiceSnapshot, Snapshot

log = logging.getLogger(__name__)

# Statuses whose empty endpoint list is believed at once; any other status needs confirmations.
DRAIN_AT_ONCE = frozenset({"stopped", "stopping"})


@dataclass(frozen=True)
class SyncStatus:
    """What we know about one service's syncing (for status pages, CR status and metrics)."""

    name: str
    service_id: str
    endpoint_count: int = 0
    synced: bool = False
    last_success: float | None = None
    last_attempt: float | None = None
    last_error: str | None = None
    last_error_kind: str | None = None
    consecutive_failures: int = 0
    empty_confirmations: int = 0
    service_status: str | None = None
    stale: bool = False
    rate_limited: bool = False
    rejected_last_poll: int = 0
    # Why a synced service has no endpoints (a drain), for /status, `status` and /readyz; None otherwise.
    no_endpoints_reason: str | None = None


class SnapshotStore:
    def __init__(self, specs: Iterable[ServicePolicy], discovery: DiscoveryConfig, clock: Clock = SYSTEM_CLOCK) -> None:
        self._discovery = discovery
        self._clock = clock
        self._cond = threading.Condition()
        self._snapshot = EMPTY_SNAPSHOT
        self._status: dict[str, SyncStatus] = {}
        self._metrics_live = True
        self.set_specs(specs)

    # -- reading ---------------------------------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot:
        with self._cond:
            return self._snapshot

    def status(self, name: str) -> SyncStatus | None:
        # Staleness comes from the clock at read time, so a dead or stuck poller still shows as stale.
        with self._cond:
            if name in self._status:
                self._refresh_stale_locked(name)
            return self._status.get(name)

    def statuses(self) -> list[SyncStatus]:
        with self._cond:
            for name in self._status:
                self._refresh_stale_locked(name)
            return [self._status[name] for name in sorted(self._status)]

    def ready(self) -> bool:
        """At least one service has a ready endpoint (synced, or loaded from last-known-good).

        A service that was drained (ModelArts reports it stopped, or running with no instances)
        counts as synced but not as ready: with every service drained there is nothing to route
        to, so /readyz is 503. While another service has endpoints it stays 200 (one empty service
        must not take a pod that serves several out of rotation); /status names the drained ones.
        """
        with self._cond:
            return any(s.synced and any(e.ready for e in s.endpoints) for s in self._snapshot.services.values())

    def without_endpoints(self) -> list[tuple[str, str]]:
        """(service, why it has no ready endpoint) for every service that has none, sorted by name."""
        with self._cond:
            found = []
            for name, svc in self._snapshot.services.items():
                if any(e.ready for e in svc.endpoints):
                    continue
                status = self._status.get(name)
                if not svc.synced:
                    why = "not synced yet" + (f" ({status.last_error})" if status and status.last_error else "")
                elif svc.endpoints:
                    why = "no endpoint is ready"
                else:
                    why = (status.no_endpoints_reason if status else None) or "no endpoints"
                found.append((name, why))
            return sorted(found)

    def not_ready_reason(self) -> str:
        """The /readyz text when `ready()` is false: each service and why it has nothing to route to."""
        missing = self.without_endpoints()
        if not missing:
            return "no services configured" if not self.snapshot.services else "no sync yet"
        return "; ".join(f"{name}: {why}" for name, why in missing)

    def wait_for_change(self, after_version: int, timeout: float,
                        until: Callable[[], bool] | None = None) -> Snapshot:
        """The snapshot once its version passes `after_version` (or `until()` holds after a `nudge()`)."""
        with self._cond:
            self._cond.wait_for(lambda: self._snapshot.version > after_version or bool(until and until()),
                                timeout=timeout)
            return self._snapshot

    def nudge(self) -> None:
        """Wake every `wait_for_change` so it re-checks its `until` condition."""
        with self._cond:
            self._cond.notify_all()

    # -- configuration -----------------------------------------------------------------------------

    def set_specs(self, specs: Iterable[ServicePolicy], discovery: DiscoveryConfig | None = None) -> None:
        """Apply a (re)loaded config: keep endpoints of services that stay, drop removed ones."""
        with self._cond:
            if discovery is not None:
                self._discovery = discovery
            current = self._snapshot.services
            services: dict[str, ServiceSnapshot] = {}
            for spec in specs:
                old = current.get(spec.name)
                keep = old is not None and old.service_id == spec.discovery_id
                services[spec.name] = ServiceSnapshot(
                    name=spec.name, service_id=spec.discovery_id,
                    endpoints=old.endpoints if keep and old else (),
                    synced=bool(keep and old and old.synced),
                )
                status = self._status.get(spec.name)
                if status is None or status.service_id != spec.discovery_id:
                    self._status[spec.name] = SyncStatus(name=spec.name, service_id=spec.discovery_id)
            for gone in set(self._status) - set(services):
                del self._status[gone]
                self._remove_gauges(gone)
            self._publish(services)

    def load_last_known_good(self, endpoints: Mapping[str, tuple[Endpoint, ...]]) -> None:
        """Seed endpoints persisted by a previous run, before the first poll (marked not-yet-synced-fresh)."""
        with self._cond:
            services = dict(self._snapshot.services)
            for name, eps in endpoints.items():
                svc = services.get(name)
                if svc is not None and not svc.synced and eps:
                    services[name] = replace(svc, endpoints=tuple(sorted(eps)), synced=True)
                    self._update_status(name, endpoint_count=len(eps), synced=True)
            self._publish(services)

    # -- results from sources --------------------------------------------------------------------

    def record_endpoints(self, name: str, endpoints: tuple[Endpoint, ...], rejected: int = 0) -> None:
        now = self._clock.wall()
        with self._cond:
            svc = self._snapshot.services.get(name)
            if svc is None:
                return
            if not endpoints:
                raise ValueError("record_endpoints needs a non-empty set; use record_empty")
            self._update_status(name, endpoint_count=len(endpoints), synced=True, last_success=now, last_attempt=now,
                                last_error=None, last_error_kind=None, consecutive_failures=0, empty_confirmations=0,
                                stale=False, rate_limited=False, rejected_last_poll=rejected,
                                service_status=self._status[name].service_status, no_endpoints_reason=None)
            self._gauge(LAST_SUCCESS, (name,), now)
            self._gauge(STALE, (name,), 0)
            self._gauge(RATE_LIMITED, (name,), 0)
            if svc.endpoints != endpoints or not svc.synced:
                services = dict(self._snapshot.services)
                services[name] = replace(svc, endpoints=endpoints, synced=True)
                log.info("endpoints changed", extra={"service": name, "count": len(endpoints),
                                                     "added": len(set(endpoints) - set(svc.endpoints)),
                                                     "removed": len(set(svc.endpoints) - set(endpoints))})
                self._publish(services)

    def record_empty(self, name: str, service_status: str, reason: str | None = None) -> bool:
        """An empty list: drain at once if the service is stopped, else only after N confirmations.

        `reason` says why the service has no endpoints once drained (default: what ModelArts
        reported). Returns True if the endpoints were drained.
        """
        now = self._clock.wall()
        with self._cond:
            svc = self._snapshot.services.get(name)
            status = self._status.get(name)
            if svc is None or status is None:
                return False
            confirmations = status.empty_confirmations + 1
            needed = self._discovery.empty_confirmations
            drain = service_status in DRAIN_AT_ONCE or confirmations >= needed or not svc.endpoints
            if drain:
                if reason is None:
                    reason = f"ModelArts reports the service {service_status} with no instances"
                    if service_status not in DRAIN_AT_ONCE and svc.endpoints:
                        reason += f" ({confirmations} consecutive empty answers)"
                self._update_status(name, endpoint_count=0, synced=True, last_success=now, last_attempt=now,
                                    last_error=None, last_error_kind=None, consecutive_failures=0,
                                    empty_confirmations=confirmations, service_status=service_status, stale=False,
                                    rate_limited=False, rejected_last_poll=0, no_endpoints_reason=reason)
                self._gauge(LAST_SUCCESS, (name,), now)
                self._gauge(STALE, (name,), 0)
                if svc.endpoints or not svc.synced:
                    log.warning("service has no endpoints; draining", extra={
                        "service": name, "service_status": service_status, "confirmations": confirmations})
                    services = dict(self._snapshot.services)
                    services[name] = replace(svc, endpoints=(), synced=True)
                    self._publish(services)
                return True
            log.warning("empty endpoint list while the service is %s: keeping %d last-known-good endpoints "
                        "(confirmation %d of %d)", service_status, len(svc.endpoints), confirmations, needed,
                        extra={"service": name})
            self._update_status(name, empty_confirmations=confirmations, service_status=service_status,
                                last_attempt=now, last_error=f"empty endpoint list while {service_status}",
                                last_error_kind="suspicious_empty")
            self._refresh_stale_locked(name)
            return False

    def record_failure(self, name: str, error: DiscoveryError) -> None:
        now = self._clock.wall()
        with self._cond:
            status = self._status.get(name)
            if status is None:
                return
            self._update_status(name, last_attempt=now, last_error=str(error), last_error_kind=error.kind,
                                consecutive_failures=status.consecutive_failures + 1,
                                rate_limited=error.kind == "throttled")
            self._gauge(RATE_LIMITED, (name,), 1 if error.kind == "throttled" else 0)
            self._refresh_stale_locked(name)

    def refresh_staleness(self) -> None:
        with self._cond:
            for name in list(self._status):
                self._refresh_stale_locked(name)

    # -- internals -------------------------------------------------------------------------------

    def _refresh_stale_locked(self, name: str) -> None:
        status = self._status[name]
        if status.last_success is None:
            return
        stale = self._clock.wall() - status.last_success > self._discovery.stale_after_seconds
        if stale != status.stale:
            if stale:
                log.warning("service is stale: serving last-known-good endpoints", extra={"service": name})
            self._update_status(name, stale=stale)
            self._gauge(STALE, (name,), 1 if stale else 0)

    def retire_metrics(self) -> None:
        """Remove this store's per-service gauges and stop writing them (a controller's term ended).

        A former leader must not go on exporting its last endpoint counts, staleness or sync times:
        they would mask the "no ready endpoints" alert (max by service) while the new leader, or
        nobody, is in charge. Any write after this (a poller still finishing) is dropped.
        """
        with self._cond:
            self._metrics_live = False
            for name in set(self._status) | set(self._snapshot.services):
                self._remove_gauges(name)

    def _gauge(self, gauge: Gauge, labels: tuple[str, ...], value: float) -> None:
        if self._metrics_live:
            gauge.labels(*labels).set(value)

    @staticmethod
    def _remove_gauges(name: str) -> None:
        for gauge, labels in ((ENDPOINTS, (name, "ready")), (ENDPOINTS, (name, "total")), (LAST_SUCCESS, (name,)),
                              (STALE, (name,)), (RATE_LIMITED, (name,))):
            with contextlib.suppress(KeyError):
                gauge.remove(*labels)

    def _update_status(self, name: str, **changes: object) -> None:
        self._status[name] = replace(self._status[name], **changes)  # type: ignore[arg-type]

    def _publish(self, services: Mapping[str, ServiceSnapshot]) -> None:
        if self._snapshot.content_equal(services) and self._snapshot.version > 0:
            return
        self._snapshot = self._snapshot.with_services(services)
        if self._metrics_live:
            SNAPSHOT_VERSION.set(self._snapshot.version)
        for name, svc in services.items():
            self._gauge(ENDPOINTS, (name, "total"), len(svc.endpoints))
            self._gauge(ENDPOINTS, (name, "ready"), sum(1 for e in svc.endpoints if e.ready))
        self._cond.notify_all()

