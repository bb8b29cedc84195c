"""`FeedbackLoop`: Envoy's counters -> per-endpoint estimates -> weights -> EDS, on one thread.

Every `sample_interval_seconds` it reads `/clusters?format=json` from the Envoy admin(s) and feeds each
host's estimator; every `update_interval_seconds` it turns the estimates of each adaptive service into
weights (agent.adaptive.weights) and, only when they changed materially, stores them in the
`WeightTable` and hands the whole table to `publish` (the sinks' `update_weights`: EDS only).

If the loop stops or Envoy's admin cannot be read, nothing is rewritten: Envoy keeps the last weights,
which are in its EDS files (or its ADS state).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace

from agent.adaptive import metrics
from agent.adaptive.drift import (
    DriftDetector,
    DriftParams,
    RecoveryTest,
    Reference,
    common_mode,
    group_reference,
    references,
)
from agent.adaptive.envoy_admin import AdminReader, AdminReadError, CounterReader
from agent.adaptive.estimator import EndpointEstimator, Estimate, EstimatorParams
from agent.adaptive.health import SEVERITY, STALE_SECONDS, STATES, ServiceHealth, estimated_latency, raw_latency
from agent.adaptive.sampling import DeltaTracker, Samples
from agent.adaptive.table import WeightTable
from agent.adaptive.weights import ServiceWeights, WeightParams
from agent.config import DataPlaneConfig

log = logging.getLogger(__name__)

Publish = Callable[[Mapping[str, Mapping[str, int]]], None]
# Latency assumed for every host of a service before any host has enough evidence: all equal.
NO_EVIDENCE_PRIOR = 0.05
# Seconds of traffic a service needs before its hosts may get unequal weights (early estimates are noisy).
WARMUP_SECONDS = 3.0
WARMUP_ANSWERS = 10.0  # ... and this many answers per host
WARN_EVERY_SECONDS = 60.0
# Until the first good read, failures this soon after start are expected (Envoy starting) and not warned about.
STARTUP_GRACE_SECONDS = 30.0
# While no adaptive service has traffic, read Envoy this many times less often (an idle sidecar costs ~nothing).
IDLE_SLOWDOWN = 10.0
# A service is idle (its estimates pause) after this long without any traffic.
IDLE_AFTER_SECONDS = 1.0


def adaptive_services(config: DataPlaneConfig) -> tuple[str, ...]:
    return tuple(sorted(s.name for s in config.services if s.adaptive_lb))


def admin_urls(config: DataPlaneConfig) -> tuple[str, ...]:
    """The Envoys to read: `adaptive.envoy_admin_urls`, else this agent's own (sidecar mode)."""
    if config.adaptive.envoy_admin_urls:
        return config.adaptive.envoy_admin_urls
    address = config.envoy.admin_address
    host = f"[{address}]" if ":" in address else address
    return (f"http://{host}:{config.envoy.admin_port}",)


def pooled_latency(estimators: Iterable[EndpointEstimator]) -> float | None:
    """The latency of all hosts taken together, when they have a measured latency's evidence between them."""
    pooled = EndpointEstimator.pooled(estimators)
    return pooled.measured_latency() if pooled is not None else None


class _Service:
    """Estimators and weight state of one adaptive service."""

    def __init__(self, weight_params: WeightParams) -> None:
        self.estimators: dict[str, EndpointEstimator] = {}
        self.weights = ServiceWeights(weight_params)
        self.prior: float | None = None  # best measured latency in the service, seconds
        self.last_traffic: float | None = None  # when a read last showed requests sent, answered or in flight
        self.health = ServiceHealth()
        # Early drift detection (agent/adaptive/drift.py), for hosts with per-request times: per host its
        # CUSUMs, the reference it is compared with and its own fast-horizon throughput (set every update).
        self.drift: dict[str, DriftDetector] = {}
        self.references: dict[str, Reference] = {}
        self.throughput: dict[str, float] = {}
        self.last_read: dict[str, float] = {}
        # Hosts on the probe floor with per-request times: the test that calls each back (drift.RecoveryTest),
        # against the reference of the hosts that have a view (`group`).
        self.recovery: dict[str, RecoveryTest] = {}
        self.group: Reference | None = None

    def relapsed(self) -> set[str]:
        """Hosts climbing on a recovery test's call whose later answers took the test's sum back to 0."""
        return {h for h in self.weights.climbing if (t := self.recovery.get(h)) is not None and t.relapsed}

    def recovered(self, prior: float) -> dict[str, float | None]:
        """Floored hosts under a recovery test: the latency of the answers that called one back (at least
        `prior`), None while it has not been called back."""
        return {h: max(prior, t.seconds / t.answers) if t.decided and t.answers else None
                for h, t in self.recovery.items() if h not in self.weights.climbing}

    def slow_hosts(self) -> set[str]:
        return {address for address, d in self.drift.items() if d.slow}


class FeedbackLoop:
    def __init__(self, config: DataPlaneConfig, table: WeightTable, publish: Publish,
                 reader: CounterReader | None = None, clock: Callable[[], float] = time.monotonic,
                 estimator_params: EstimatorParams | None = None) -> None:
        self.table = table
        self._publish = publish
        self._clock = clock
        self._given_params = estimator_params
        self._estimator_params = estimator_params or EstimatorParams()
        self._drift_params = DriftParams()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._services: dict[str, _Service] = {}
        self._tracker = DeltaTracker()
        self._reader: CounterReader | None = reader
        self._own_reader = reader is None
        self._next_update = 0.0
        self._unpublished = False
        self._last_warning = -WARN_EVERY_SECONDS
        self._first_step: float | None = None
        self.reads_ok = self.reads_failed = 0
        self.idle = False  # no adaptive service had traffic at the last read
        self.cpu_seconds = 0.0
        self.last_error: str | None = None
        self._last_good_read: float | None = None
        self.update_config(config)

    # -- configuration -------------------------------------------------------------------------------

    def update_config(self, config: DataPlaneConfig) -> None:
        """Hot reload: services that turned adaptive off lose their weights (EDS back to plain)."""
        with self._lock:
            self._config = config
            adaptive = self._config.adaptive
            self._weight_params = WeightParams(max_ratio=adaptive.max_weight_ratio)
            if self._given_params is None:
                # Reads more than ~4 intervals apart (jitter is at most 1.5x) are baselines, not evidence.
                interval = adaptive.sample_interval_seconds
                self._estimator_params = replace(
                    EstimatorParams(), max_gap_seconds=max(EstimatorParams.max_gap_seconds, 4 * interval))
            wanted = set(adaptive_services(config))
            dropped = [name for name in self._services if name not in wanted]
            for name in dropped:
                for address in self._services.pop(name).estimators:
                    metrics.forget(name, address)
            for name in wanted:
                if name not in self._services or self._services[name].weights.params != self._weight_params:
                    self._services[name] = _Service(self._weight_params)
            if self._own_reader:
                urls = admin_urls(config)
                if self._reader is None or self._reader.urls != urls:
                    if self._reader is not None:
                        self._reader.close()
                    self._reader = AdminReader(urls)
                    self._tracker = DeltaTracker()
        removed = [name for name in dropped if self.table.drop(name)]
        if removed:
            self._safe_publish()

    @property
    def services(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(sorted(self._services))

    # -- running ---------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="adaptive-feedback", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._own_reader and self._reader is not None:
            self._reader.close()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = self._clock()
            cpu = time.thread_time()
            try:
                self.step(started)
            except Exception:
                log.exception("adaptive feedback step failed; weights stay as they are")
            self.cpu_seconds += time.thread_time() - cpu  # what the loop costs the agent (docs/adaptive-lb.md)
            # Jittered: in-flight counts are sampled, and a fixed period could alias with periodic traffic.
            interval = self._config.adaptive.sample_interval_seconds * random.uniform(0.5, 1.5)
            if self.idle:
                interval *= IDLE_SLOWDOWN
            self._stop.wait(max(0.0, interval - (self._clock() - started)))

    def step(self, now: float) -> None:
        """One sample; and, when due, one weight update. Public so tests can drive it with a fake clock."""
        if self._first_step is None:
            self._first_step = now
        with self._lock:
            if not self._services or self._reader is None:
                return
            names = tuple(self._services)
            reader = self._reader
        try:
            answers = reader.read(names)
        except AdminReadError as exc:
            self._read_failed(now, str(exc))
            self._export_health(now)
            return
        self.reads_ok += 1
        self.last_error = None
        self._last_good_read = now
        metrics.ADMIN_READS.labels("ok").inc()
        with self._lock:
            marked = self._observe(now, self._tracker.update(answers))
            # A host the drift test just found slower is cut at once, not at the next update: a fall
            # protects latency (and marks are rare: none in 250 host-minutes of identical instances).
            due = now >= self._next_update or marked
            if due:
                self._next_update = now + self._config.adaptive.update_interval_seconds
                changed = self._update(now)
        if due and (changed or self._unpublished):
            self._safe_publish()
        if due:
            self._export_health(now)

    # -- health ----------------------------------------------------------------------------------------

    def health(self, now: float | None = None) -> dict[str, object]:
        """`state` (agent.adaptive.health: starting, ok, stale, blind, latched), why, and per service."""
        now = self._clock() if now is None else now
        with self._lock:
            services = {name: {"state": s.health.state, **({"reason": s.health.reason} if s.health.reason else {})}
                        for name, s in sorted(self._services.items())}
        first = now if self._first_step is None else self._first_step
        age = None if self._last_good_read is None else now - self._last_good_read
        if age is None:
            state = "starting" if now - first < STARTUP_GRACE_SECONDS else "stale"
            reason = f"no good read of Envoy's admin yet: {self.last_error}" if self.last_error else ""
        elif age >= STALE_SECONDS:
            state, reason = "stale", f"no good read of Envoy's admin for {age:.0f} s: {self.last_error}"
        else:
            worst = max((str(v["state"]) for v in services.values()), key=SEVERITY.__getitem__, default="ok")
            state = worst
            reason = "; ".join(f"{n}: {v['reason']}" for n, v in services.items() if v["state"] == worst
                               and "reason" in v)
        return {"state": state, **({"reason": reason} if reason else {}),
                "last_good_read_age_seconds": None if age is None else round(age, 1), "services": services}

    def _export_health(self, now: float) -> None:
        state = self.health(now)["state"]
        for name in STATES:
            metrics.LOOP_STATE.labels(name).set(1 if name == state else 0)

    def _read_failed(self, now: float, error: str) -> None:
        self.reads_failed += 1
        self.last_error = error
        metrics.ADMIN_READS.labels("error").inc()
        first = now if self._first_step is None else self._first_step
        if self.reads_ok == 0 and now - first < STARTUP_GRACE_SECONDS:
            # Envoy usually starts after the agent (it needs the agent's files): not worth a warning yet.
            log.debug("Envoy admin not readable yet: %s", error)
            return
        if now - self._last_warning >= WARN_EVERY_SECONDS:
            self._last_warning = now
            log.warning("cannot read Envoy admin for adaptive weights; Envoy keeps the last ones: %s", error)

    def _observe(self, now: float, samples: Samples) -> bool:
        """Feed the estimators, drift and recovery tests; True when a host was newly found slower than the
        others, or a floored one was called back (both are acted on at once)."""
        all_idle = True
        marked = False
        for name, service in self._services.items():
            hosts = samples.get(name)
            if hosts is None:
                continue  # cluster not (yet) in Envoy
            for gone in [a for a in service.estimators if a not in hosts]:
                del service.estimators[gone]
                service.drift.pop(gone, None)
                metrics.forget(name, gone)
            quiet = all(s.sent == 0 and s.active == 0 and s.succeeded == 0 and s.failed == 0 for s in hosts.values())
            if not quiet or service.last_traffic is None:
                service.last_traffic = now
            # Idle only after a second without traffic: at 50 ms reads a light service has many quiet reads,
            # which are real evidence (nothing in flight), not a pause.
            idle = quiet and now - service.last_traffic >= IDLE_AFTER_SECONDS
            all_idle = all_idle and idle
            for address, sample in hosts.items():
                estimator = service.estimators.get(address)
                if estimator is None:
                    estimator = service.estimators[address] = EndpointEstimator(self._estimator_params)
                if idle:
                    estimator.pause(now)
                    service.last_read.pop(address, None)
                    continue
                estimator.observe(now, sample, service.prior)
                reference = service.references.get(address)
                last = service.last_read.get(address)
                service.last_read[address] = now
                # Not streaming hosts: a stream's time to first byte includes waiting for a slot other
                # streams hold, which is load and differs by chance between identical hosts (a healthy
                # instance was floored for six rounds of identical streams); their speed is the
                # estimator's slot-free minimum, and the tolerance rule applies to them.
                if reference is not None and sample.timing and last is not None and not estimator.streaming:
                    detector = service.drift.setdefault(address, DriftDetector(self._drift_params))
                    expected = reference.expected(service.throughput.get(address, 0.0))
                    if detector.observe(now - last, sample.timed, sample.timed_seconds, expected, reference.cv2) \
                            and detector.slow:
                        estimator.adopt_fast()  # its long horizon keeps only the slower recent requests
                        marked = True
                test = service.recovery.get(address)
                # Against the best measured latency (the others at their load): the question is whether the
                # host would serve as well as they do now, as its recent view was asked (within 1.5x of the best).
                # While it climbs on that call, the test goes on: the climb ends as soon as the answers it
                # brings undo the run (a false call costs about a second at a tenth of the heaviest weight).
                climbing = address in service.weights.climbing
                if test is not None and sample.timing and service.prior is not None and (climbing or not test.decided):
                    called = test.observe(sample.timed, sample.timed_seconds, service.prior)
                    if (climbing and test.relapsed) or (not climbing and called):
                        marked = True  # called back, or relapsed: acted on at this read, not at the next update
        self.idle = all_idle
        return marked

    def _update(self, now: float) -> bool:
        changed = False
        for name, service in self._services.items():
            if not service.estimators:
                continue
            for address in service.slow_hosts():
                # Marked slower than the others: its estimate follows its last ~2 s (a drifting host keeps
                # drifting; judged by a 10 s horizon it got ~1.5x the share its capacity called for).
                service.estimators[address].adopt_fast()
            measured = [m for e in service.estimators.values() if (m := e.measured_latency()) is not None]
            # Measured latencies are > 0 (estimator). No host with enough evidence of its own: the hosts
            # together (a light service with short requests; their mean is no faster than the best).
            service.prior = min(measured) if measured else pooled_latency(service.estimators.values())
            prior = NO_EVIDENCE_PRIOR if service.prior is None else service.prior
            estimates = {address: e.estimate(prior)
                         for address, e in service.estimators.items()}
            pooled = EndpointEstimator.pooled(service.estimators.values())
            # Warm-up: 3 s of traffic and ~10 answers per host. Streams answer only when they end: seconds
            # after the first ones started, too late to tell a stream from a slow unary request before then.
            # Answers counted since the start (Estimate.answers), not over the decayed slow horizon: that one
            # holds at most rate x slow_tau, so a service answering under 1/s per host (streams at 25 % of 4 x 4
            # slots: 3.5/s for 4 hosts) never left the warm-up, and every weight stayed equal.
            warming = max(e.span for e in service.estimators.values()) < WARMUP_SECONDS or \
                pooled is None or sum(e.answers for e in estimates.values()) < WARMUP_ANSWERS * len(estimates)
            self._refresh_drift(service)
            recovered, relapsed = service.recovered(prior), service.relapsed()
            # A climb on a recovery test's call rises only once the answers it brings have added to the call.
            hold = {h for h in service.weights.climbing if (t := service.recovery.get(h)) is not None
                    and not t.confirmed}
            proposed = service.weights.propose(estimates, all_equal=warming, below=service.slow_hosts(),
                                               recovered=recovered, relapsed=relapsed, hold=hold,
                                               stream_hold=None if pooled is None else pooled.stream_hold())
            for address in relapsed:
                del service.recovery[address]  # back on the floor: a fresh test from its level now
            for address in service.weights.lifted:
                test = service.recovery.get(address) if address in recovered else None
                service.estimators[address].trust_recent(fast=service.weights.evidence.get(address) == "fast",
                                                         evidence=None if test is None else test.evidence)
            self._refresh_recovery(service, estimates)
            if proposed is not None:
                self.table.set_weights(name, proposed)
                metrics.WEIGHT_UPDATES.labels(name).inc()
                changed = True
                log.debug("adaptive weights", extra={"service": name, "weights": proposed})
            recent_traffic = service.last_traffic is not None and now - service.last_traffic < IDLE_AFTER_SECONDS
            service.health.update(now, recent_traffic, service.prior, raw_latency(service.estimators.values()),
                                  estimated_latency(estimates))
            published = service.weights.published
            self.table.set_view(name, published, estimates)
            for address, weight in published.items():
                metrics.ENDPOINT_WEIGHT.labels(name, address).set(weight)
                if address in estimates:
                    metrics.ENDPOINT_LATENCY.labels(name, address).set(estimates[address].latency)
        return changed

    def _refresh_recovery(self, service: _Service, estimates: Mapping[str, Estimate]) -> None:
        """A recovery test for each host on the probe floor with per-request times, tested against its level
        now (its recent view); kept while the host climbs on its call; dropped for the others."""
        params = service.weights.params
        climbing = service.weights.climbing
        floored = {h for h, w in service.weights.published.items() if w < params.probe_band * params.floor
                   and h not in climbing and h in estimates and service.estimators[h].timing}
        service.recovery = {h: t for h, t in service.recovery.items()
                            if h in floored or (h in climbing and t.score > 0)}
        for address in floored - set(service.recovery):
            e = estimates[address]
            service.recovery[address] = RecoveryTest(e.latency if e.recent is None else e.recent,
                                                     None if service.group is None else service.group.cv2)

    def _refresh_drift(self, service: _Service) -> None:
        """The references and throughputs the next reads' drift tests use (from the fast horizons)."""
        common_mode(service.drift, len(service.estimators))
        views = {a: v for a, e in service.estimators.items() if (v := e.drift_view()) is not None}
        variances = {a: var for a, d in service.drift.items() if (var := d.variance_estimate()) is not None}
        service.references = references(views, variances, service.slow_hosts(), self._drift_params)
        service.throughput = {a: v[1] for a, v in views.items()}
        service.group = group_reference(views, variances, service.slow_hosts(), self._drift_params)
        for address in [a for a in service.drift if a not in views]:
            # No fast view (too little traffic: floored, or idle): the test has nothing to go on; forget it.
            del service.drift[address]

    def _safe_publish(self) -> None:
        try:
            self._publish(self.table.weights())
            self._unpublished = False
        except Exception:
            self._unpublished = True  # retried at the next update
            log.exception("publishing adaptive weights failed; retrying at the next update")
