"""Service-time distributions of emulator instances: lognormal next to exponential (issue 17's matrix)."""

from __future__ import annotations

import math
import random
import statistics

import pytest
from modelarts_emulator.config import LatencyConfig
from modelarts_emulator.instances import draw_latency
from pydantic import ValidationError


@pytest.mark.parametrize("sigma", [0.25, 0.5, 1.0])
def test_lognormal_service_times_have_the_configured_mean_and_shape(sigma: float) -> None:
    config = LatencyConfig(base_ms=2.0, jitter_ms=10.0, distribution="lognormal", sigma=sigma)
    rng = random.Random(3)
    draws = [draw_latency(config, rng) * 1000 for _ in range(40_000)]
    assert min(draws) > 2.0  # base plus a positive factor, never below the base
    extra = [d - 2.0 for d in draws]
    assert statistics.fmean(extra) == pytest.approx(10.0, rel=0.03)
    cv = statistics.pstdev(extra) / statistics.fmean(extra)
    assert cv == pytest.approx(math.sqrt(math.exp(sigma ** 2) - 1), rel=0.08)
    median = statistics.median(extra)
    assert median == pytest.approx(10.0 * math.exp(-sigma ** 2 / 2), rel=0.03)  # right-skewed: median < mean


def test_exponential_is_still_the_default_and_sigma_is_checked() -> None:
    assert LatencyConfig(jitter_ms=5).distribution == "exponential"
    for bad in (0, -1, 10):
        with pytest.raises(ValidationError):
            LatencyConfig(jitter_ms=5, distribution="lognormal", sigma=bad)
