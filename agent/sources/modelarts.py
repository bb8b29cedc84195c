"""The `modelarts` source: polls each configured service under the shared rate budget.

One worker per credential identity. Services are kept in a due-time order, so when the budget
cannot honour every poll interval, polls are spread round-robin and each service's effective
interval stretches to `services x pacing` instead of any call being sent over budget.

The loop survives anything a poll raises: an unforeseen exception is recorded as that service's
sync error (kind `internal`), logged once with its traceback (repeats counted), and the service
backs off. Warnings that would repeat on every poll (a failure, dropped entries, a 429) are
logged when they change, with the count of the previous one.
"""

from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass

from agent.clock import SYSTEM_CLOCK, Clock
from agent.config import AgentConfig, ServiceSpec
from agent.errors import DiscoveryError, ThrottledError
from agent.loops import FailureLog, backoff_seconds
from agent.metrics import DISCOVERY_CALLS, DISCOVERY_LATENCY, ENDPOINTS_REJECTED
from agent.modelarts.client import ModelArtsClient, Stopped, allowed_networks
from agent.modelarts.parse import ParsedEndpoints
from agent.snapshot import SnapshotStore
from agent.sources.repeats import RepeatGate

log = logging.getLogger(__name__)

THROTTLE_BASE_BACKOFF = 5.0


@dataclass
class _Schedule:
    due: float
    failures: int = 0


def backoff_delay(failures: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with 'equal jitter': never below half the step, never above the cap."""
    step = min(cap, base * 2.0 ** max(0, failures - 1))
    return step / 2 + rng.uniform(0, step / 2)


class ModelArtsSource:
    def __init__(self, config: AgentConfig, store: SnapshotStore, client: ModelArtsClient,
                 clock: Clock = SYSTEM_CLOCK, stop: threading.Event | None = None,
                 rng: random.Random | None = None) -> None:
        self._store = store
        self._client = client
        self._clock = clock
        self._stop = stop or threading.Event()
        self._wake = threading.Event()
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._schedule: dict[str, _Schedule] = {}
        self._config = config
        self._allowed = allowed_networks(config)
        self._repeats = RepeatGate(clock)
        self._crashes = FailureLog(log, "modelarts poller")
        # Monotonic time of the loop's last turn: /status shows its age (a stuck poller ages).
        self.last_turn: float | None = None
        self.update_config(config)

    # -- configuration ---------------------------------------------------------------------------

    def update_config(self, config: AgentConfig) -> None:
        now = self._clock.monotonic()
        with self._lock:
            self._config = config
            self._allowed = allowed_networks(config)
            names = {s.name for s in config.services}
            for name in list(self._schedule):
                if name not in names:
                    del self._schedule[name]
            for spec in config.services:
                self._schedule.setdefault(spec.name, _Schedule(due=now))
        self._wake.set()

    def effective_interval(self, spec: ServiceSpec) -> float:
        """The poll interval the budget can actually honour for this service."""
        with self._lock:
            count = max(1, len(self._schedule))
            config = self._config
        return max(config.poll_interval(spec), count * self._client.budget.spacing)

    # -- the loop --------------------------------------------------------------------------------

    def run(self) -> None:
        log.info("modelarts source started", extra={"services": len(self._schedule)})
        failures = 0
        try:
            while not self._stop.is_set():
                self.last_turn = self._clock.monotonic()
                try:
                    self.step()
                except Exception as exc:  # never the end of discovery: log once, back off, go on
                    failures += 1
                    self._crashes.failed(exc, failures=failures)
                    self._clock.sleep(backoff_seconds(failures, 1.0, self._config.discovery.max_backoff_seconds),
                                      self._stop)
                else:
                    if failures:
                        self._crashes.recovered()
                    failures = 0
        except BaseException:
            log.critical("the modelarts poller died; its services will turn stale", exc_info=True)
            raise
        log.info("modelarts source stopped")

    def step(self) -> None:
        """Poll the most overdue service, or wait until one is due (wakes early on config change)."""
        self._store.refresh_staleness()
        with self._lock:
            if not self._schedule:
                name, due = None, self._clock.monotonic() + 1.0
            else:
                name, sched = min(self._schedule.items(), key=lambda item: (item[1].due, item[0]))
                due = sched.due
        wait = due - self._clock.monotonic()
        if name is None or wait > 0:
            self._wake.clear()
            self._clock.sleep(min(max(wait, 0.0), 1.0), self._stop)
            return
        spec = next((s for s in self._config.services if s.name == name), None)
        if spec is None:
            return
        delay = self.poll(spec)
        with self._lock:
            current = self._schedule.get(name)
            if current is not None:
                current.due = self._clock.monotonic() + delay

    def poll(self, spec: ServiceSpec) -> float:
        """One discovery cycle for one service; returns the delay until its next poll."""
        config = self._config
        interval = config.poll_interval(spec)
        sched = self._schedule.get(spec.name) or _Schedule(due=0.0)
        started = self._clock.monotonic()
        try:
            parsed = self._client.get_endpoints(spec.service_id, self._allowed, config.discovery.max_endpoints,
                                                spec.project_id)
            DISCOVERY_LATENCY.labels(spec.name).observe(max(0.0, self._clock.monotonic() - started))
            self._report_rejected(spec.name, parsed)
            # Count before publishing: whoever sees the new snapshot also sees the metric.
            if parsed.endpoints:
                DISCOVERY_CALLS.labels(spec.name, "success").inc()
                self._store.record_endpoints(spec.name, parsed.endpoints, rejected=len(parsed.rejected))
            elif parsed.raw_count:
                raise DiscoveryError(f"all {parsed.raw_count} endpoint entries were rejected", kind="all_rejected")
            else:
                info = self._client.get_service(spec.service_id, spec.project_id)
                DISCOVERY_CALLS.labels(spec.name, "empty").inc()
                self._store.record_empty(spec.name, info.status)
            sched.failures = 0
            self._report_recovered(spec.name)
            return interval
        except Stopped:
            return interval
        except ThrottledError as exc:
            sched.failures += 1
            penalty = exc.retry_after if exc.retry_after is not None else backoff_delay(
                sched.failures, THROTTLE_BASE_BACKOFF, config.discovery.max_backoff_seconds, self._rng)
            self._client.budget.penalize(penalty)
            self._store.record_failure(spec.name, exc)
            DISCOVERY_CALLS.labels(spec.name, "throttled").inc()
            repeated = self._repeats.check(f"{spec.name}/failure", ("throttled", exc.retry_after is None))
            if repeated is not None:
                log.warning("throttled by ModelArts; pausing this identity's calls for %.1fs%s", penalty,
                            _previous(repeated), extra={"service": spec.name})
            return max(interval, penalty)
        except DiscoveryError as exc:
            return self._failed(spec.name, sched, exc, interval)
        except Exception as exc:  # a bug or an answer nobody foresaw: a sync error, never a dead poller
            self._crashes.failed(exc, service=spec.name)
            error = DiscoveryError(f"internal error while polling: {type(exc).__name__}", kind="internal")
            return self._failed(spec.name, sched, error, interval)

    def _failed(self, name: str, sched: _Schedule, exc: DiscoveryError, interval: float) -> float:
        sched.failures += 1
        self._store.record_failure(name, exc)
        DISCOVERY_CALLS.labels(name, exc.kind).inc()
        repeated = self._repeats.check(f"{name}/failure", (exc.kind, str(exc)))
        if repeated is not None:
            log.warning("discovery failed, keeping last-known-good endpoints: %s%s", exc, _previous(repeated),
                        extra={"service": name, "kind": exc.kind, "failures": sched.failures})
        if sched.failures == 1:
            return interval
        return max(interval, backoff_delay(sched.failures - 1, interval, self._config.discovery.max_backoff_seconds,
                                           self._rng))

    def _report_recovered(self, name: str) -> None:
        repeated = self._repeats.forget(f"{name}/failure")
        if repeated is not None:
            log.info("discovery recovered%s", _previous(repeated), extra={"service": name})

    def _report_rejected(self, name: str, parsed: ParsedEndpoints) -> None:
        """Dropped entries: one line when the set of reasons changes, not one per entry per poll."""
        for _entry, rejection in parsed.rejected:
            ENDPOINTS_REJECTED.labels(name, rejection.reason).inc()
        signature = tuple(sorted(rejection.detail for _entry, rejection in parsed.rejected))
        if not signature:
            self._repeats.forget(f"{name}/rejected")
            return
        repeated = self._repeats.check(f"{name}/rejected", signature)
        if repeated is None:
            return
        reasons: dict[str, int] = {}
        for _entry, rejection in parsed.rejected:
            reasons[rejection.reason] = reasons.get(rejection.reason, 0) + 1
        summary = ", ".join(f"{reason} x{count}" for reason, count in sorted(reasons.items()))
        log.warning("dropped %d endpoint entries (%s)%s", len(parsed.rejected), summary, _previous(repeated),
                    extra={"service": name, "details": list(signature[:20])})


def _previous(repeated: int) -> str:
    return f" (the previous message repeated {repeated} more times)" if repeated else ""
