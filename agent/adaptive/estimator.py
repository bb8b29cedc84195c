"""Per-endpoint latency and capacity estimates from Envoy's counters, peak-EWMA style.

Envoy exports no per-host latency, but it does export, per host, the requests sent and the requests in
flight. Little's law gives the mean time a request spends at the host (queueing at the instance
included): latency = mean in-flight / throughput. Both are kept as exponentially decayed sums:

- `busy`: the integral of in-flight requests over time (sampled; trapezoids between reads);
- `succeeded`: requests answered successfully (a host that fails fast must not look fast, so latency
  is time in flight per *successful* request);
- `span`: the decayed elapsed time, to turn sums into rates.

Two horizons, like peak-EWMA: a slow one (`slow_tau`, the estimate) and a fast one (`fast_tau`). When
the fast one shows the host clearly slower (`peak_factor`), the slow one jumps to it: a host that
degrades is noticed within a couple of seconds, while good news is believed only slowly. What one
interval adds to the slow horizon is capped (`cap_factor` x the best latency per request), so a queue
that blew up does not dominate the estimate for minutes after the host has recovered.

A host with little recent traffic has little evidence: its latency is blended with a prior (the best
latency in the service) as if `prior_requests` requests had been observed at that prior. As its
evidence decays, its estimate drifts back towards the best, its weight rises and traffic probes it
again: the starvation guard. With steady probe traffic the evidence holds and the estimate stays put.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from agent.adaptive.sampling import HostSample

# A horizon's latency comes from the per-request times when they cover at least this share of its answers
# (2xx with a body are timed, other successes are not: a HEAD, a trailers-only gRPC answer).
TIMED_SHARE = 0.5
# The drift view takes the slow horizon's service time as a floor under the fast one's up to this factor.
STALE_FACTOR = 1.25


@dataclass(frozen=True)
class EstimatorParams:
    slow_tau: float = 10.0  # seconds
    fast_tau: float = 2.0  # seconds
    # The fast horizon counts only with this much evidence (in-flight counts are sampled, so a handful of
    # short requests would give a noisy figure), or when requests sit unanswered for this long in total.
    fast_min_requests: float = 20.0
    stuck_busy_seconds: float = 1.0
    # The fast horizon wins only when clearly worse (its noise must not demote a healthy host).
    peak_factor: float = 2.0
    # ... and, with per-request times, only once every read's answers have been that slow for this long:
    # with heavy-tailed service times (lognormal sigma 1.5) a single request of ~1 s now and then holds a
    # 1-slot host, the answers queued behind it come within a read or a few, and their mean alone took the
    # 2 s horizon past 2x. The adoption then held a healthy, identical host at ~1/3 of the heaviest weight
    # for 6-9 s, several times in two minutes (the queue was gone before the weight was published). A host
    # that really got slower is slow at every read: this costs it `peak_persist_seconds`; a host stuck on
    # its requests (no answers) is caught by `stuck_busy_seconds` instead.
    peak_persist_seconds: float = 0.5
    # ... answering throughout: a gap between two of the run's answered reads longer than the read gap
    # (`max_gap_seconds`) or this many answers at the host's own pace (its slow horizon's throughput) starts
    # the run again. A 1-slot host held by one request of ~1 s answers nothing meanwhile, then the dozen
    # queued behind it within a few reads: the clock had run through the stall from two mildly slow reads
    # before it, and their backlog was adopted as a peak at once (a healthy host at 420 of 1000 for 7 s in
    # the simulator). A host that got slower keeps answering, slowly: the run goes on. A host that stops
    # answering with requests in flight is the stuck rule's (`stuck_busy_seconds`).
    peak_gap_answers: float = 4.0
    # The slow horizon counts at most this many times the prior per request (winsorizing): a queue
    # blow-up must not dominate the estimate for minutes after the host has recovered.
    cap_factor: float = 20.0
    prior_requests: float = 3.0  # pseudo-requests at the prior latency
    confident_requests: float = 20.0  # evidence needed for a host's latency to serve as the prior
    # ... and this much sampled in-flight time behind it (20 reads' worth at the default 50 ms): short
    # requests are seen in flight by few reads, and a latency from a handful of sightings can be far too
    # low (issue 17: 20 answers no read saw in flight measured 0 s, the prior became 0 and latched the
    # loop). Not more, or a light service (0.1 requests in flight on average) would never get a prior.
    # A host without such evidence is never reported faster than the best host that has it.
    confident_busy_seconds: float = 1.0
    # A read this long after the previous one is a new baseline, not evidence: the in-flight integral
    # over the gap is unknown (the loop reads rarely while idle; a stalled process reads late).
    max_gap_seconds: float = 0.2  # the loop sets it from sample_interval_seconds
    # The recent view: the last few answered requests, whenever they came (decay per request, not per
    # second). A host on the probe floor gets a request every few seconds; its last `recent_requests`
    # say whether it recovered without waiting for the slow horizon to forget, and no traffic at all
    # is no evidence of recovery (a time-decayed view would drift to "recovered" by itself).
    recent_requests: float = 3.0
    recent_tau: float = 30.0  # ... and what is older than this hardly counts
    recent_min_requests: float = 2.5
    # Streams (a request holds the instance after its first byte: in-flight time per answer at least
    # `hold_factor` x its time to first byte): the time to first byte includes waiting for a slot that
    # other streams hold, which is load (streams in flight), not speed, and differs by chance between
    # identical hosts. Their speed is the lower `base_quantile` of the last `base_batches` reads' mean
    # times to first byte (answers that found a free slot), as BBR takes the minimum RTT for the path.
    # A host counts as streaming until the ratio falls below `hold_exit`: when streams queue for slots the
    # time to first byte grows towards the time held, and the ratio with it falls (hysteresis).
    hold_factor: float = 2.0
    hold_exit: float = 1.25
    base_batches: int = 40
    base_min_batches: int = 8
    base_quantile: float = 0.0
    peak_tau: float = 60.0  # a streaming host's slots (the most streams in flight at once) are forgotten slowly


class _Decayed:
    """Exponentially decayed sums over one horizon.

    `timed`/`timed_sum`: answers with a measured time to first byte and the sum of those times (the timing
    access logger, when Envoy has it); `timed_sq`/`timed_reads`: the sum over reads of (read's sum)^2 / (its
    count) and the number of reads with any, for the per-request variance by batch means.
    """

    __slots__ = ("busy", "done", "sent", "span", "succeeded", "tau", "timed", "timed_reads", "timed_sq",
                 "timed_sum")

    def __init__(self, tau: float) -> None:
        self.tau = tau
        self.sent = self.succeeded = self.done = self.busy = self.span = 0.0
        self.timed = self.timed_sum = self.timed_sq = self.timed_reads = 0.0

    def add(self, dt: float, sample: HostSample, busy: float, timed_sum: float) -> None:
        keep = math.exp(-dt / self.tau)
        self.sent = self.sent * keep + sample.sent
        self.succeeded = self.succeeded * keep + sample.succeeded
        self.done = self.done * keep + sample.succeeded + sample.failed
        self.busy = self.busy * keep + busy
        self.span = self.span * keep + dt
        self.timed = self.timed * keep + sample.timed
        self.timed_sum = self.timed_sum * keep + timed_sum
        self.timed_sq = self.timed_sq * keep + (timed_sum * timed_sum / sample.timed if sample.timed else 0.0)
        self.timed_reads = self.timed_reads * keep + (1.0 if sample.timed else 0.0)

    def throughput(self) -> float:
        return self.done / self.span if self.span > 0 else 0.0

    def adopt(self, other: _Decayed, max_busy: float | None) -> None:
        """Take `other`'s figures (the long horizon jumping to what the short one saw)."""
        for name in ("sent", "succeeded", "done", "span", "timed", "timed_sum", "timed_sq", "timed_reads"):
            setattr(self, name, getattr(other, name))
        self.busy = other.busy if max_busy is None else min(other.busy, max_busy)

    @property
    def is_timed(self) -> bool:
        """Per-request times cover most answers here: they, not Little's law, give the latency."""
        return self.timed >= 1.0 and self.timed >= TIMED_SHARE * self.succeeded

    def latency(self) -> float | None:
        """Seconds per successful answer: time to first byte per timed answer when timed (a failure counts
        as one more request at that latency), else Little's law (in-flight time per success)."""
        if self.is_timed:
            return self.timed_sum / self.timed * (self.done / self.succeeded if self.succeeded > 0 else 1.0)
        return self.busy / self.succeeded if self.succeeded > 0 else None

    def evidence(self, timing: bool = False) -> tuple[float, float]:
        """(seconds, answers) behind `latency()`, for blending with a prior. With per-request times on
        (`timing`) and nothing answered, none: time in flight with no answer is an open stream's as much
        as a slow host's, and it is load (least_request counts it), not evidence of speed."""
        if timing and self.succeeded < 1.0 and self.timed < 1.0:
            return 0.0, 0.0
        if self.is_timed:
            return self.timed_sum * (self.done / self.succeeded if self.succeeded > 0 else 1.0), self.timed
        return self.busy, self.succeeded

    def cv2(self) -> float | None:
        """Squared coefficient of variation of the per-request times (batch means), if there are enough."""
        if self.timed_reads < 10 or self.timed <= 0 or self.timed_sum <= 0:
            return None
        mean = self.timed_sum / self.timed
        var = max(self.timed_sq - self.timed_sum * mean, 0.0) / (self.timed_reads - 1)
        return var / (mean * mean)


class _Recent:
    """In-flight time and answers over the last ~`size` answered requests (decayed per request)."""

    __slots__ = ("busy", "size", "succeeded", "tau")

    def __init__(self, size: float, tau: float) -> None:
        self.size, self.tau = size, tau
        self.busy = self.succeeded = 0.0

    def add(self, dt: float, succeeded: int, busy: float) -> None:
        keep = math.exp(-succeeded / self.size - dt / self.tau)
        self.succeeded = self.succeeded * keep + succeeded
        self.busy = self.busy * keep + busy

    def latency(self) -> float | None:
        return self.busy / self.succeeded if self.succeeded > 0 else None


@dataclass(frozen=True)
class Estimate:
    latency: float  # seconds per successful request, prior and peak applied
    rate: float  # requests per second sent to the host
    throughput: float  # requests per second it answered, over the horizon that gave `latency`
    in_flight: float  # mean requests in flight
    evidence: float  # decayed count of successful requests behind `latency`
    measured: float | None  # latency from the slow horizon alone (no prior), if any
    recent: float | None = None  # latency over the last few answered requests (at least the prior), if enough
    fast: float | None = None  # latency over the fast horizon, when it has `fast_min_requests` answers
    answers: int = 0  # answers (successes and failures) seen so far, a running count: is there news?
    failed_share: float = 0.0  # share of the slow horizon's answers that failed (0 with too few answers)
    # The most requests seen in flight at once lately (for streams, a lower bound of the host's slots), and for
    # a streaming host (its requests hold it well after their first byte) the seconds one holds it.
    peak_active: float = 0.0
    hold: float | None = None
    # The lowest of its last reads' mean times to first byte (answers that found a free slot), any host with
    # per-request times: what a service of streams is split by before each host is judged a streaming one.
    base: float | None = None

    @property
    def recent_capacity(self) -> float | None:
        """Capacity from the recent view: what a host on the probe floor is judged by."""
        return None if self.recent is None else 1.0 / self.recent

    @property
    def capacity(self) -> float:
        """Requests/s the host could serve, from its latency at its throughput: see `service_time`."""
        return 1.0 / service_time(self.latency, self.throughput)

    @property
    def goodput_capacity(self) -> float:
        """Successful answers/s the host could serve: its capacity for answers (the M/D/1 inversion of the time
        per *answer*, failures included, at its answer throughput) x its success share. `latency` is per success
        (x done/succeeded), and inverting it at the throughput of all answers took the inflation for queueing: a
        host failing 30 % looked as able as a healthy one and got as much traffic (the breaker mix). 0 % failed:
        `capacity` exactly; 100 %: 0 (the floor)."""
        ok = 1.0 - self.failed_share
        if ok <= 0.0:
            return 0.0
        return ok / service_time(self.latency * ok, self.throughput)


def queue_latency(service: float, rate: float) -> float:
    """Mean time at a single-server queue with constant service time (M/D/1, the model `service_time`
    inverts), inf at or over capacity."""
    load = rate * service
    return math.inf if load >= 1.0 else service + rate * service * service / (2.0 * (1.0 - load))


def service_time(latency: float, throughput: float) -> float:
    """Seconds of work per request, by inverting the M/D/1 queue (Pollaczek-Khinchine, constant service):

        latency = s + λ·s² / (2·(1 - λ·s))   ->   λ·s² - 2·(λ·L + 1)·s + 2·L = 0, the smaller root.

    An idle host gives its latency; a loaded one less than its latency (the rest was queueing); a
    saturated one about 1/throughput. Inference instances that serve several requests at once look
    slower than they are, which only makes the split more conservative. (The M/M/1 inversion,
    1/(λ + 1/L), credits loaded hosts with up to ~30% too much capacity against idle ones, which kept
    recovered hosts from ever looking as good as the loaded ones.)
    """
    latency = max(latency, 1e-6)
    lam = max(throughput, 0.0)
    if lam * latency < 1e-9:
        return latency
    b = lam * latency + 1.0
    return (b - math.sqrt(b * b - 2.0 * lam * latency)) / lam


def _positive(value: float | None) -> float | None:
    """A latency is a finite positive number; anything else is no latency (never a prior of 0 or NaN)."""
    return value if value is not None and math.isfinite(value) and value > 0 else None


class EndpointEstimator:
    def __init__(self, params: EstimatorParams | None = None) -> None:
        self.params = params or EstimatorParams()
        self._slow = _Decayed(self.params.slow_tau)
        self._fast = _Decayed(self.params.fast_tau)
        self._recent = _Recent(self.params.recent_requests, self.params.recent_tau)
        self._last_time: float | None = None
        self._last_active = 0
        self._timing = False
        self._answers = 0
        self._batches: deque[float] = deque(maxlen=self.params.base_batches)  # per-read mean times to first byte
        self._peak = 0.0  # in flight at once, the most lately (decays over `peak_tau`)
        self._high_since: float | None = None  # first of the reads in a row above the peak line
        self._last_answered: float | None = None  # the last read with timed answers
        self._streaming = False  # its requests hold it after their first byte (see `hold_factor`)

    def observe(self, now: float, sample: HostSample, prior: float | None = None) -> None:
        """One read of the host: `sample` holds the counts since the previous read.

        `prior` (the best latency in the service) bounds what one interval adds to the slow horizon.
        """
        p = self.params
        if self._last_time is None or now - self._last_time > p.max_gap_seconds:
            # The first read, or one after a gap whose in-flight history was not sampled: a baseline only.
            self._last_time, self._last_active = now, sample.active
            return
        dt = now - self._last_time
        if dt <= 0:
            return
        busy = dt * (self._last_active + sample.active) / 2.0
        self._peak = max(float(sample.active), self._peak * math.exp(-dt / p.peak_tau))
        self._answers += sample.succeeded + sample.failed
        prior = _positive(prior)
        capped = busy if prior is None else min(busy, max(sample.succeeded, 1) * p.cap_factor * prior)
        timed = sample.timed_seconds
        capped_timed = timed if prior is None else min(timed, sample.timed * p.cap_factor * prior)
        self._slow.add(dt, sample, capped, capped_timed)
        self._fast.add(dt, sample, busy, timed)
        self._timing = sample.timing
        if sample.timing:
            self._recent.add(dt, sample.timed, timed)  # exact: each answer's time to first byte
            if sample.timed:
                self._batches.append(timed / sample.timed)
        else:
            self._recent.add(dt, sample.succeeded, busy)
        fast_latency, slow_latency = self._fast.latency(), self._slow.latency()
        if sample.timing and sample.timed and slow_latency is not None:
            # The run of reads whose answers were all slower than the peak line (see `peak_persist_seconds`),
            # answering throughout (`peak_gap_answers`).
            pace = self._slow.throughput()
            gap = max(p.max_gap_seconds, p.peak_gap_answers / pace if pace > 0 else math.inf)
            if timed / sample.timed <= p.peak_factor * slow_latency:
                self._high_since = None
            elif self._high_since is None or self._last_answered is None or now - self._last_answered > gap:
                self._high_since = now
        if sample.timing and sample.timed:
            self._last_answered = now
        broad = not (sample.timing and self._fast.is_timed) or \
            (self._high_since is not None and now - self._high_since >= p.peak_persist_seconds)
        if self._fast_count() >= p.fast_min_requests and fast_latency is not None and slow_latency is not None \
                and fast_latency > p.peak_factor * slow_latency and broad:
            # Peak: the host got clearly slower; what the long horizon remembers no longer applies.
            self._slow.adopt(self._fast, None if prior is None else self._fast.succeeded * p.cap_factor * prior)
        elif self._fast.is_timed and self._slow.is_timed and self._fast.timed >= p.fast_min_requests \
                and fast_latency is not None and slow_latency is not None \
                and fast_latency * p.peak_factor < slow_latency:
            # Trough, with exact per-request times only: the host is clearly faster than the long horizon
            # says. A mean over 10 s is ruled by its worst seconds: after a queue blow-up (seconds per
            # request) the few percent of it left after 25 s of normal traffic still read ~10x the true
            # latency, for every host, and masked a host slowing down 4x meanwhile (its peak test and the
            # drift test compare it with those inflated figures). Sampled counts keep the slow way.
            self._slow.adopt(self._fast, None)
        self._last_time, self._last_active = now, sample.active

    def _fast_count(self) -> float:
        return self._fast.timed if self._fast.is_timed else self._fast.succeeded

    def adopt_fast(self) -> None:
        """The drift detector found the host slower: the slow horizon keeps only what the fast one saw."""
        self._slow.adopt(self._fast, None)

    @property
    def streaming(self) -> bool:
        """Its requests hold it well after their first byte (see `hold_factor`; judged at each estimate)."""
        return self._streaming

    @property
    def timing(self) -> bool:
        """The last read had per-request times for this host (Envoy's timing logger)."""
        return self._timing

    def drift_view(self) -> tuple[float, float] | None:
        """(service time, fast-horizon throughput) from per-request times, when the fast horizon has
        `fast_min_requests` of them; the service time is the larger of the fast and the slow horizon's
        (service_time at each one's throughput). The drift detector's references are made of these."""
        fast, slow = self._fast, self._slow
        if not self._timing or not fast.is_timed or fast.timed < self.params.fast_min_requests:
            return None
        fast_latency, slow_latency = fast.latency(), slow.latency() if slow.is_timed else None
        if fast_latency is None:
            return None
        service = service_time(fast_latency, fast.throughput())
        if slow_latency is not None:
            # The long horizon as a floor under a noisy short one, but not far above it: then it is stale
            # (after a queue blow-up it read 2x the truth for 20 s, and made every other host look fine).
            service = max(service, min(service_time(slow_latency, slow.throughput()), STALE_FACTOR * service))
        return service, fast.throughput()

    def pause(self, now: float) -> None:
        """The whole service was idle since the last read: let no time pass for this estimate.

        Estimates age with the service's traffic, not with the clock: after a quiet night the service
        starts from what it knew, while a host starved *during* traffic still drifts back (probing).
        The next read is a baseline: what was in flight between an idle read and a busy one is unknown
        (taking it as 0 made the first busy interval's latency 0, issue 17).
        """
        self._last_time = None

    @classmethod
    def pooled(cls, estimators: Iterable[EndpointEstimator]) -> EndpointEstimator | None:
        """One estimator whose slow horizon sums theirs (for a service-wide latency), None if there are none."""
        items = list(estimators)
        if not items:
            return None
        pooled = cls(items[0].params)
        for e in items:
            for name in ("sent", "succeeded", "done", "busy", "timed", "timed_sum", "timed_sq", "timed_reads"):
                setattr(pooled._slow, name, getattr(pooled._slow, name) + getattr(e._slow, name))
        return pooled

    def answered(self) -> float:
        """Answers over the slow horizon (decayed): for a pooled estimator, the service's evidence."""
        return self._slow.done

    def stream_hold(self) -> float | None:
        """For a pooled estimator (`pooled`): the seconds a request holds a host (in flight per answer), when
        the service's requests are streams (held at least `hold_factor` x their time to first byte, over at
        least `confident_requests` answers); None for a unary service or too little evidence. Decided for the
        service as a whole: a host on the floor has too few answers of its own to tell."""
        slow, p = self._slow, self.params
        if slow.done < p.confident_requests or not slow.is_timed or slow.timed < p.confident_requests:
            return None
        hold, ttfb = slow.busy / slow.done, slow.timed_sum / slow.timed
        return hold if hold >= p.hold_factor * ttfb else None

    @property
    def fast_busy(self) -> float:
        return self._fast.busy

    @property
    def fast_succeeded(self) -> float:
        return self._fast.succeeded

    @property
    def span(self) -> float:
        """Decayed seconds of traffic observed (at most about `slow_tau`)."""
        return self._slow.span

    def measured_latency(self) -> float | None:
        """Slow-horizon latency when there is enough evidence for it to be a prior for others: enough timed
        answers (exact), or enough answers and sampled in-flight time (Little's law)."""
        slow, p = self._slow, self.params
        if slow.is_timed:
            return _positive(slow.latency()) if slow.timed >= p.confident_requests else None
        if slow.succeeded < p.confident_requests or slow.busy < p.confident_busy_seconds:
            return None
        return _positive(slow.latency())

    def base_latency(self) -> float | None:
        """For a host whose requests hold it after their first byte (streams), its time to first byte
        without waiting for a slot: the lower quantile of recent reads' mean times (see `hold_factor`).
        None for other hosts (for unary requests queueing at the instance is slowness) or too few reads."""
        slow, p = self._slow, self.params
        if not self._timing or not slow.is_timed or slow.done <= 0 or len(self._batches) < p.base_min_batches:
            return None
        ttfb = slow.timed_sum / slow.timed
        held = slow.busy / slow.done  # in-flight time per answer (Little's law): a stream's whole length
        if slow.timed >= p.confident_requests:
            self._streaming = held >= (p.hold_exit if self._streaming else p.hold_factor) * ttfb
        if not self._streaming:
            return None
        ordered = sorted(self._batches)
        return ordered[int(p.base_quantile * (len(ordered) - 1))]

    def estimate(self, prior: float) -> Estimate:
        """`prior`: the best confidently measured latency in the service, or an assumed one when there is
        none. A host without a measured latency of its own is never reported faster than the prior: a
        few short requests seen by few reads measure far too little (the property test finds 0.5x)."""
        if _positive(prior) is None:
            raise ValueError(f"the prior must be a positive latency, not {prior!r}")
        p = self.params
        slow = self._slow
        # Pseudo-requests at the prior: little evidence -> close to the prior; lots -> the measurement.
        fast = self._fast
        seconds, answers = slow.evidence(self._timing)
        latency = (seconds + p.prior_requests * prior) / (answers + p.prior_requests)
        if self.measured_latency() is None:
            latency = max(latency, prior)  # thin evidence cannot beat the best confident measurement
        base = self.base_latency()
        if base is not None:
            # Streams: waiting for a slot is load, which least_request balances; speed is what remains
            # (never below the prior, which is the best mean: a lucky low quantile must not lead).
            latency = min(latency, max(base, prior))
        throughput = slow.throughput()
        # Requests in flight for long with few answers: stuck. With per-request times, only if it also keeps
        # getting requests: an open stream is in flight, unanswered, for as long as the client reads
        # (issue 16), and that is load (Envoy's least_request counts it), not slowness.
        may_be_stuck = not self._timing or fast.sent >= p.fast_min_requests
        if may_be_stuck and fast.succeeded < p.fast_min_requests and fast.busy >= p.stuck_busy_seconds:
            # Requests in flight but few answered lately: a stuck or very slow host; count the time so far.
            stuck = fast.busy / max(fast.succeeded, 1.0)
            if stuck > latency:
                latency, throughput = stuck, fast.throughput()
        span = max(slow.span, 1e-9)
        recent = None
        if self._recent.succeeded >= p.recent_min_requests:
            recent = max(prior, self._recent.busy / self._recent.succeeded)  # no prior: it would flatter
        fast_latency = fast.latency() if self._fast_count() >= p.fast_min_requests else None
        failed = 1.0 - slow.succeeded / slow.done if slow.done >= p.confident_requests else 0.0
        hold = slow.busy / slow.done if self._streaming and slow.done >= p.confident_requests else None
        lowest = min(self._batches) if self._timing and len(self._batches) >= p.base_min_batches else None
        return Estimate(latency=latency, rate=slow.sent / span, throughput=throughput,
                        in_flight=slow.busy / span, evidence=answers, measured=slow.latency(), recent=recent,
                        fast=None if fast_latency is None else max(prior, fast_latency), answers=self._answers,
                        failed_share=min(max(failed, 0.0), 1.0), peak_active=self._peak, hold=hold,
                        base=lowest)

    def trust_recent(self, fast: bool = False, evidence: tuple[float, float] | None = None) -> None:
        """The host climbs back on its recent evidence: the slow horizon forgets the bad spell and keeps only
        what the last few requests showed, with their small weight, so the requests the climb brings decide
        at once whether it stays up (still slow: it falls again at the next update). `evidence`: (answers,
        seconds) that decided it instead of the recent view (drift.RecoveryTest: the answers since the change
        point; the recent view still holds part of the spell)."""
        if fast:  # the host had traffic: its fast horizon is the recent evidence
            self._slow.adopt(self._fast, None)
            return
        recent, slow = self._recent, self._slow
        if evidence is not None and evidence[0] > 0 and evidence[1] > 0:
            recent.succeeded, recent.busy = evidence
        timed = slow.is_timed
        base = slow.timed if timed else slow.succeeded
        if recent.succeeded <= 0 or base <= 0:
            return
        scale = min(1.0, recent.succeeded / base)
        for name in ("sent", "done", "span", "timed_sq", "timed_reads", *(("succeeded", "busy") if timed else ())):
            setattr(slow, name, getattr(slow, name) * scale)
        if timed:
            slow.timed, slow.timed_sum = recent.succeeded, recent.busy
        else:
            slow.succeeded, slow.busy = recent.succeeded, recent.busy
        self._fast.adopt(slow, None)
