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


@dataclass(frozen=True)
class Reference:
    """What a host as fast as the others would show: their median service time and per-request CV^2."""

    service: float  # seconds of work per request (single-server model)
    cv2: float | None  # per-request variance / expected^2 of batch means; None: not known yet

    def expected(self, throughput: float) -> float:
        """Mean time to first byte of such a host at `throughput` requests/s (M/D/1, as service_time)."""
        rho = min(max(throughput, 0.0) * self.service, 0.9)  # beyond that the model says little
        lam = rho / self.service
        return self.service + lam * self.service ** 2 / (2 * (1 - rho))


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

    __slots__ = ("_answers", "_expected", "_seconds", "_span", "batches", "down", "params", "slow", "up",
                 "variance")

    def __init__(self, params: DriftParams | None = None) -> None:
        self.params = params or DriftParams()
        self.up = self.down = 0.0
        self.slow = False
        # Per-request variance in units of expected^2 (n x ((batch mean - expected) / expected)^2, decayed
        # over batches): what the reference of the *other* hosts uses.
        self.variance = 0.0
        self.batches = 0.0
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
        self.variance = self.variance * keep + (1 - keep) * n * ((mean - expected) / expected) ** 2
        self.batches = self.batches * keep + 1.0
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
        """The decayed per-request variance (units of expected^2), once `batches` carry enough weight."""
        filled = 1 - math.exp(-self.batches / self.params.variance_tau) if self.batches else 0.0
        return self.variance / filled if self.batches >= 10 and filled > 0 else None
