"""The drift test's false alarms when the expected time wanders (issue 17: identical instances never marked).

The expected time of a host comes from its 2 s throughput through the single-server queue model; for a host
serving several requests at once that model moves ~3 % per 1 % of throughput while the host hardly moves, so
the error of the expected time is a slow wander, not independent from batch to batch (lag-1 correlation of
the batch deviations 0.35-0.7 in the cluster simulator with 4 slots). The CUSUM sums batches as independent
evidence: its variance must be the long-run one, or a run of low expected times decides (seed 8334 of the
property test in test_drift.py: a host marked slow at 56.6 s of 60)."""

from __future__ import annotations

import math
import random

import pytest

from agent.adaptive.drift import DriftDetector


def feed(detector: DriftDetector, rng: random.Random, rho: float, wander: float, batches: int, n: int = 57) -> None:
    """`batches` batches of `n` answers right on a host's true mean (iid noise of a lognormal sigma 0.8,
    per-request CV^2 0.87) against an expected time whose relative error is AR(1) (`rho`, sd `wander`)."""
    w = 0.0
    for _ in range(batches):
        w = rho * w + math.sqrt(1 - rho * rho) * rng.gauss(0, wander)
        mean = 1 + rng.gauss(0, math.sqrt(0.87 / n))
        detector.observe(1.0, n, n * mean, 1 + w, None)


def estimates(rho: float, wander: float, seed: int) -> tuple[float, float]:
    """Mean over 20 hosts of (variance_estimate, the batch variance alone as it was before: the decayed
    mean square of the batch deviations)."""
    rng = random.Random(seed)
    ours, batch = [], []
    for _ in range(20):
        detector = DriftDetector()
        feed(detector, rng, rho, wander, 200)
        estimate = detector.variance_estimate()
        assert estimate is not None
        ours.append(estimate)
        batch.append(detector.variance / (1 - math.exp(-detector.batches / detector.params.variance_tau)))
    return sum(ours) / len(ours), sum(batch) / len(batch)


def test_the_variance_is_the_long_run_one_when_batches_correlate() -> None:
    """A wander of lag-1 correlation 0.6 and sd 0.2: the long-run variance is 0.87 + 57 x 0.04 x 1.6 / 0.4 =
    9.99 per request, 3.2x the batch variance (3.15). The AR(1) factor on the batch deviations (which mix the
    wander with independent noise) gives 2.4x of it (before: 1x, the batch variance alone)."""
    ours, batch = estimates(0.6, 0.2, 3)
    assert 2.0 < ours / batch < 3.2, (ours, batch)


def test_independent_batches_keep_the_batch_variance() -> None:
    """No correlation: the batch variance (an r that white noise shows is not taken)."""
    ours, batch = estimates(0.0, 0.1, 4)
    assert 1.0 <= ours / batch < 1.1, (ours, batch)  # measured 1.000


@pytest.mark.parametrize(("rho", "most"), [(0.0, 0), (0.6, 20), (0.75, 35)])
def test_identical_hosts_against_a_wandering_reference_are_rarely_marked(rho: float, most: int) -> None:
    """4 identical hosts, 3,000 batches each (50 minutes), each tested against the others' pooled variance as
    the references do, the expected times wandering 20 % (AR(1) `rho`). Marks, cleared at once, over 3 seeds:
    measured 0 / 5 / 9 with the long-run variance, 0 / 64 / 135 with the batch variance alone."""
    marks = 0
    for seed in range(3):
        rng = random.Random(seed)
        hosts = [DriftDetector() for _ in range(4)]
        w = [0.0] * 4
        for _ in range(3000):
            known = [d.variance_estimate() for d in hosts]
            for i, detector in enumerate(hosts):
                w[i] = rho * w[i] + math.sqrt(1 - rho * rho) * rng.gauss(0, 0.2)
                others = [v for j, v in enumerate(known) if j != i and v is not None]
                cv2 = sum(others) / len(others) if len(others) >= 2 else None
                mean = 1 + rng.gauss(0, math.sqrt(0.87 / 57))
                if detector.observe(1.0, 57, 57 * mean, 1 + w[i], cv2) and detector.slow:
                    marks += 1
                    detector.clear()
    assert marks <= most, marks
