"""A tiny simulated host for the estimator tests: what Envoy's counters would show, read every `dt`."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from agent.adaptive.estimator import EndpointEstimator, EstimatorParams
from agent.adaptive.sampling import HostSample


@dataclass
class SimHost:
    """Requests arrive at `rate`/s and each stays `latency` s: in flight ~ Poisson(rate * latency)."""

    rate: float
    latency: float
    seed: int = 1
    estimator: EndpointEstimator = field(default_factory=lambda: EndpointEstimator(EstimatorParams()))

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def _poisson(self, mean: float) -> int:
        # Knuth's method; the means here are small.
        if mean <= 0:
            return 0
        limit, k, p = math.exp(-mean), 0, 1.0
        while True:
            p *= self._rng.random()
            if p <= limit:
                return k
            k += 1

    def sample(self, dt: float) -> HostSample:
        done = self._poisson(self.rate * dt)
        return HostSample(sent=done, succeeded=done, failed=0, active=self._poisson(self.rate * self.latency))

    def run(self, start: float, seconds: float, dt: float = 0.05, prior: float | None = None) -> float:
        """Feed `seconds` of reads to the estimator; returns the time reached."""
        now = start
        for _ in range(round(seconds / dt)):
            now += dt
            self.estimator.observe(now, self.sample(dt), prior)
        return now
