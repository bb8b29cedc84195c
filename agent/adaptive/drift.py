"""Early drift detection (issue 17): is a host that counts as one of the best still as fast as the others?

The top group's tolerance (agent/adaptive/weights.py: within 1.5x of the best, leave below 1/2) keeps
identical instances seen through noisy estimates at equal weights, but it also holds a host that lost
30 % of its capacity at the top: under Envoy's least-request pick a slower host gets fewer requests,
queues less, and its latency rises less than its service time. A tighter fixed line trades one failure
for the other (tried in an earlier round: it caught the fall, and it moved weights on identical
instances). The evidence needed depends on the noise, which depends on the service, so the rule here is
a test whose thresholds are in units of evidence, not of latency:

- Each read brings a batch of a host's answers with their exact times to first byte (Envoy's timing
  access logger). What those answers *should* have taken is what a host as fast as the others would
  show at this host's own load: the others' median service time (estimator.service_time, M/D/1
  inversion of their fast-horizon latency at their throughput), put back through the same queue model
  at this host's throughput. Comparing at the host's own load matters: a host that lost weight gets
  fewer requests and queues less, and a plain latency comparison would call it recovered at once.
- Two one-sided CUSUMs (Page's test) per host on the batch means, with Gaussian log-likelihood ratios
  between "as fast as the others" (H0: mean = expected) and "`shift` slower" (H1: mean = expected x (1 +
  shift)); the per-request variance is the others' (batch means over the fast horizon, floored at
  `min_cv`, the queue model's own error). `up` crossing `threshold` marks the host slow; `down` crossing
  `back_threshold` (evidence for H0 over H1) marks it back. The decision line is expected x (1 + shift /
  2) both ways: a host right on it random-walks and crosses rarely.
- Why CUSUM: it is the fastest test for a change in mean for a given false-alarm rate (Lorden), its
  detection time scales with the size of the change (a 2x fall is seen in a few requests, 30 % in
  ~100), and with no change its drift is negative, so identical hosts do not flap: the expected
  number of requests between false alarms grows like e^threshold.

The test is relative: "slower than the others". When half of the hosts or more are marked slow at once,
the reference is what moved (the machine or the whole service slowed down, a stall hit every host's
batch): the marks are cleared (`common_mode`), and the usual tolerance applies.

Only hosts with per-request times are tested (counters alone: Little's law on sampled in-flight counts
carries ~10-20 % noise over a few seconds, the size of the signal; there the tolerance above applies).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from agent.adaptive.estimator import queue_latency


@dataclass(frozen=True)
class DriftParams:
    shift: float = 0.3  # the slow-down the test is designed for (x the expected time; decides at half of it)
    threshold: float = 12.0  # log-likelihood ratio to decide (e^12: false alarms ~1 in 10^5 batches)
    # ... and to call a marked host back: a wrong "back" costs one more detection (~5 s at a reduced
    # weight), a wrong "slow" costs a healthy host its weight, so the way back asks for less evidence.
    back_threshold: float = 5.0
    min_cv: float = 0.25  # per-request variance at least (min_cv x expected)^2: the queue model's error
    max_batch_llr: float = 5.0  # one batch moves a CUSUM at most this much (one stall must not decide alone)
    min_reference: int = 2  # other hosts with a fast-horizon view needed for a reference
    # Answers are tested in batches of at least this long: queueing correlates successive requests' times
    # over a few hundred ms near capacity, so per-read batches would understate the variance of a mean
    # (and false alarms would follow). The variance is that of these batch means (the batch-means method).
    batch_seconds: float = 1.0
    batch_answers: int = 5
    variance_tau: float = 20.0  # batches behind the variance estimate (decayed)
    # ... and that is not always long enough: the expected time wanders with the host's 2 s throughput,
    # which the single-server model amplifies for a host that serves several requests at once (4 slots at
    # 60 % load invert to rho ~0.8, where the model moves 3 % per 1 % of throughput and the host hardly at
    # all). Successive batch deviations then correlate (lag 1: 0.35-0.7 with 4 slots, ~0 with one), and the
    # CUSUM, which sums them as independent evidence, found a 15-batch run of 20-35 % low expected times on
    # identical hosts. The variance is the long-run one, the batch variance x (1 + r) / (1 - r) with r the
    # lag-1 correlation of the batch deviations (AR(1)), r taken in [0, max_correlation] (never below the
    # batch variance: the false-alarm rate is at most what it was where batches are independent).
    max_correlation: float = 0.8
    # r is a property of the service and its model: over ~60 batches (decayed), and taken only when white
    # noise would not show it (r x sqrt(batches) > correlation_z; over ~20 batches r is +-0.2 where batches
    # are independent, one slot, and taking that noise at face value slowed the detection of a 30 % fall
    # past 5 s and a floored host's recovery, whose prior is these variances, past 10 s). At 4 slots r is
    # 0.35-0.7.
    correlation_tau: float = 60.0
    correlation_z: float = 2.0


@dataclass(frozen=True)
class Reference:
    """What a host as fast as the others would show: their median service time and per-request CV^2."""

    service: float  # seconds of work per request (single-server model)
    cv2: float | None  # per-request variance / expected^2 of batch means; None: not known yet

    def expected(self, throughput: float) -> float:
        """Mean time to first byte of such a host at `throughput` requests/s (M/D/1, as service_time)."""
        rho = min(max(throughput, 0.0) * self.service, 0.9)  # beyond that the model says little
        return queue_latency(self.service, rho / self.service)


def references(views: Mapping[str, tuple[float, float]], variances: Mapping[str, float], slow: set[str],
               params: DriftParams) -> dict[str, Reference]:
    """Per host, the reference made of the *other* hosts: the median of their service times (`views`: per
    host the larger of its fast- and slow-horizon service times, so that neither a noisy short horizon
    nor a lagging long one makes the others look faster than they are) and of their batch variances.
    Hosts marked slow are left out while enough others remain (a slow host must not drag it along)."""
    out: dict[str, Reference] = {}
    for host in views:
        others = [h for h in views if h != host]
        normal = [h for h in others if h not in slow]
        chosen = normal if len(normal) >= params.min_reference else others
        if len(chosen) < params.min_reference:
            continue
        # The others' variances pooled (their mean): each comes from a few dozen batches (+-40 %), together
        # from ~60 or more; an understated variance is what makes false alarms (the threshold is in its units).
        known = [variances[h] for h in chosen if h in variances]
        cv2 = max(sum(known) / len(known), params.min_cv ** 2) if len(known) >= params.min_reference else None
        out[host] = Reference(_median(sorted(views[h][0] for h in chosen)), cv2)
    return out


def common_mode(detectors: Mapping[str, DriftDetector], hosts: int) -> bool:
    """Half of the `hosts` or more marked slow: the service moved, not a host; clear every mark."""
    marked = [d for d in detectors.values() if d.slow]
    if hosts >= 2 and 2 * len(marked) >= hosts:
        for d in marked:
            d.clear()
        return True
    return False


def _median(values: list[float]) -> float:
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


class DriftDetector:
    """The two CUSUMs of one host (see the module docstring)."""

    __slots__ = ("_answers", "_expected", "_last", "_seconds", "_span", "_square", "_weight", "batches", "covariance",
                 "down", "level", "params", "slow", "up", "variance")

    def __init__(self, params: DriftParams | None = None) -> None:
        self.params = params or DriftParams()
        self.up = self.down = 0.0
        self.slow = False
        # Per-request variance in units of expected^2 (n x ((batch mean - expected) / expected)^2, decayed
        # over batches): what the reference of the *other* hosts uses.
        self.variance = 0.0
        self.batches = 0.0
        # ... their decayed mean, and the lag-1 covariance of successive ones (the long-run variance, see
        # DriftParams.max_correlation; centred: a steady offset of the reference is in the variance once, not
        # taken for a correlation), over `correlation_tau` batches; `_weight`: their decayed count of batches
        self.level = 0.0
        self.covariance = 0.0
        self._square = 0.0
        self._weight = 0.0
        self._last: float | None = None  # the last batch's deviation, sqrt(n) x (mean - expected) / expected
        self._answers, self._seconds, self._expected, self._span = 0, 0.0, 0.0, 0.0

    def observe(self, dt: float, answers: int, seconds: float, expected: float, cv2: float | None) -> bool:
        """One read: `answers` with `seconds` of time to first byte in total over the last `dt` seconds,
        against the `expected` mean time (Reference.expected at this host's throughput); `cv2`: the
        per-request variance / expected^2 of the other hosts (None: not known yet, no test). Returns True
        when the verdict changed."""
        if expected <= 0 or not math.isfinite(seconds) or answers < 0:
            return False
        p = self.params
        self._answers += answers
        self._seconds += seconds
        self._expected += answers * expected
        self._span += dt
        if self._span < p.batch_seconds or self._answers < p.batch_answers:
            return False
        n, mean, expected = self._answers, self._seconds / self._answers, self._expected / self._answers
        self._answers, self._seconds, self._expected, self._span = 0, 0.0, 0.0, 0.0
        keep = math.exp(-1.0 / p.variance_tau)
        z = math.sqrt(n) * (mean - expected) / expected
        self.variance = self.variance * keep + (1 - keep) * z * z
        self.batches = self.batches * keep + 1.0
        slow = math.exp(-1.0 / p.correlation_tau)
        self.level = self.level * slow + z
        self._square = self._square * slow + z * z
        # (the first batch pairs with 0: the covariance lags the other sums by one batch of weight)
        self.covariance = self.covariance * slow + z * (self._last or 0.0)
        self._weight = self._weight * slow + 1.0
        self._last = z
        if cv2 is None:
            return False
        delta = p.shift * expected
        variance = max(cv2, p.min_cv ** 2) * expected * expected
        # log(H1/H0) for n requests with this mean: slower-by-`shift` against as-expected.
        llr = n * delta * (mean - expected - delta / 2) / variance
        llr = max(-p.max_batch_llr, min(p.max_batch_llr, llr))
        self.up = max(0.0, self.up + llr)
        self.down = max(0.0, self.down - llr)
        if not self.slow and self.up >= p.threshold:
            self.slow, self.down = True, 0.0
            return True
        if self.slow and self.down >= p.back_threshold:
            self.slow, self.up = False, 0.0
            return True
        return False

    def clear(self) -> None:
        """Back to "as fast as the others", the evidence either way dropped."""
        self.up = self.down = 0.0
        self.slow = False

    def variance_estimate(self) -> float | None:
        """The decayed per-request variance (units of expected^2), once `batches` carry enough weight: the
        long-run one, what a sum of successive batches shows (see `max_correlation`)."""
        tau = self.params.variance_tau
        filled = 1 - math.exp(-self.batches / tau) if self.batches else 0.0
        if self.batches < 10 or filled <= 0:
            return None
        variance = self.variance / filled
        w = self._weight
        mean, square = self.level / w, self._square / w
        r = (self.covariance / w - mean * mean) / (square - mean * mean) if square > mean * mean else 0.0
        # only a correlation that white noise would not show (Bartlett: r is +-1/sqrt(batches) there)
        r = r if r * math.sqrt(w) > self.params.correlation_z else 0.0
        r = min(max(r, 0.0), self.params.max_correlation)
        return variance * (1 + r) / (1 - r)


@dataclass(frozen=True)
class RecoveryParams:
    """The sequential test that calls a host on the probe floor back (`RecoveryTest`)."""

    # log-likelihood ratio to decide (e^4 = 55 to 1: a wrong call costs about a second at a tenth of the
    # heaviest weight, until the climb's own answers undo the run and put the host back on the floor)
    threshold: float = 4.0
    max_answer_llr: float = 2.5  # one read's answers move it at most this much: two reads at least decide
    tolerance: float = 0.5  # "as bad as before" is at least (1 + tolerance) x the others (the top group's line)
    memory: float = 10.0  # the host's level and spread while floored: over its last ~10 probe reads
    prior_reads: float = 2.0  # ... starting from this many pseudo-reads at its estimate when it was floored
    unknown_cv2: float = 1.0  # the per-request CV^2 of those pseudo-reads when the others' is not known
    # ... and at most this when it is: the others' CV^2 is of batch means under load, queueing included, and
    # after a spell near capacity it stays far above what an idle host's probes show (60-80 after a 90 % load
    # phase, 40 s later: a recovered host's good probes then moved the sum ~0.4 each, and it was called back
    # 21-25 s after recovering instead of 3-5 s). The floored host's own probes replace the pseudo-reads
    # within ~`memory` reads, so a truly variable service still shows its spread. Not 1 (an exponential's): a
    # host staying 4x slow with exponential times was then called back on lucky probes and climbed to the top.
    max_prior_cv2: float = 4.0
    min_cv: float = 0.25  # the spread is at least log(1 + min_cv^2): the noise of a nearly constant service


def group_reference(views: Mapping[str, tuple[float, float]], variances: Mapping[str, float], slow: set[str],
                    params: DriftParams) -> Reference | None:
    """The reference of a host that has no view of its own (on the probe floor, it gets too few requests for
    a fast horizon): the median service time of every host that has one (not marked slow, while one is left)
    and their variances pooled. None without any view."""
    normal = [h for h in views if h not in slow] or list(views)
    if not normal:
        return None
    known = [variances[h] for h in normal if h in variances]
    cv2 = max(sum(known) / len(known), params.min_cv ** 2) if known else None
    return Reference(_median(sorted(views[h][0] for h in normal)), cv2)


class RecoveryTest:
    """Is a host on the probe floor as good as the others again? (issue 17: back at its fair weight within
    10 s of recovering.)

    A floored host gets a probe every couple of seconds (the probe budget). Judged by the mean of its last ~3
    answers (decayed per answer), it needed 5-6 answers after recovering to forget a 4x spell: 8-13 s at
    150 rps. Here each read's answers feed a CUSUM (Page's test) of the log-likelihood ratio between "as good
    as the others" (H0: mean `good`, the best measured latency in the service, as the recent view was judged
    against) and "as it has been on the floor" (H1: the level of its own last ~`memory` probe reads, at least
    (1 + tolerance) x good), both log-normal (times are positive and skewed) with the spread of those same
    probe reads (at least `min_cv`'s). The floored host answers at idle, so its own probes, not the loaded
    others, say how noisy its service is: a nearly constant service is called back after two good answers,
    a lognormal one (sigma 0.5) after 2-4, an exponential one after more, and a host that stays slow drifts
    the sum down (a lucky answer is undone by the next ones). One read moves the sum at most
    `max_answer_llr`. The reads of a run (the sum above 0) join the level only when it ends without a call.
    `evidence` is what the run holds (answers and their seconds since the sum last left 0): the change
    point's estimate, which the host climbs on instead of an average that still remembers the spell. The
    test goes on while the host climbs: the climb rises only once its answers add to the call (`confirmed`)
    and ends on the floor when they take the sum back to 0 (`relapsed`).
    """

    __slots__ = ("_run", "_s0", "_s1", "_s2", "answers", "called_at", "params", "score", "seconds")

    def __init__(self, bad: float, cv2: float | None = None, params: RecoveryParams | None = None) -> None:
        p = self.params = params or RecoveryParams()
        spread = math.log1p(max(p.unknown_cv2 if cv2 is None else min(cv2, p.max_prior_cv2), p.min_cv ** 2))
        mean = math.log(max(bad, 1e-9)) - spread / 2
        # decayed sums of weight, log time and its square over the reads outside a run (pseudo-reads first)
        self._s0, self._s1, self._s2 = p.prior_reads, p.prior_reads * mean, p.prior_reads * (mean * mean + spread)
        self.score = 0.0
        self.answers, self.seconds = 0, 0.0
        self._run: list[float] = []  # log times of the current run's reads
        self.called_at: float | None = None  # the sum when it first decided

    def level(self) -> tuple[float, float]:
        """(mean time, log spread per read) of the host's probes outside a run."""
        mean = self._s1 / self._s0
        spread = max(self._s2 / self._s0 - mean * mean, math.log1p(self.params.min_cv ** 2))
        return math.exp(mean + spread / 2), spread

    def observe(self, answers: int, seconds: float, good: float) -> bool:
        """One read's `answers`, `seconds` of time to first byte in total; True once the host is called back."""
        if answers <= 0 or good <= 0 or not math.isfinite(seconds) or seconds <= 0:
            return False
        p = self.params
        y = math.log(seconds / answers)
        level, spread = self.level()
        bad = max(level, (1 + p.tolerance) * good)
        spread_n = math.log1p(math.expm1(spread) / answers)  # a mean of n answers is less spread
        gap = math.log(bad / good)
        # log N(y; log good - s/2, s) - log N(y; log bad - s/2, s)
        llr = gap * (math.log(good) + (gap - spread_n) / 2 - y) / spread_n
        if self.score <= 0:
            self.answers, self.seconds = 0, 0.0
        self.score = max(0.0, self.score + min(llr, p.max_answer_llr))
        self._run.append(y)
        if self.score > 0:
            self.answers += answers
            self.seconds += seconds
            del self._run[:-64]
        else:
            # The run ended without a change: its reads are the level the next answers are tested against
            # (all of them: keeping only those that ended runs would make the level too slow and too narrow).
            keep = math.exp(-1.0 / p.memory)
            for value in self._run:
                self._s0, self._s1, self._s2 = (self._s0 * keep + 1, self._s1 * keep + value,
                                                self._s2 * keep + value * value)
            self._run = []
        if self.called_at is None and self.score >= p.threshold:
            self.called_at = self.score
        return self.score >= p.threshold

    @property
    def decided(self) -> bool:
        return self.score >= self.params.threshold

    @property
    def confirmed(self) -> bool:
        """Called back, and the answers since have added to the evidence (what a climb needs to go on)."""
        return self.called_at is not None and self.score > self.called_at

    @property
    def relapsed(self) -> bool:
        """The run that decided is over (the answers since took the sum back to 0)."""
        return self.score <= 0

    @property
    def evidence(self) -> tuple[int, float]:
        return self.answers, self.seconds
