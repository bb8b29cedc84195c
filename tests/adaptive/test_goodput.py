"""Goodput-aware weights (issue 17, breaker mix): a host failing a share of its answers is weighed by the
successes it can serve, never more than an identical healthy host."""

from __future__ import annotations

from agent.adaptive.estimator import Estimate
from agent.adaptive.weights import WeightParams, target_weights

PARAMS = WeightParams()
SERVICE = 0.010


def est(failed: float, rate: float = 60.0) -> Estimate:
    """Failures take as long as successes (the emulator's 500s): time per success = per answer / (1 - p)."""
    per_answer = SERVICE + rate * SERVICE * SERVICE / (2 * (1 - rate * SERVICE))  # M/D/1 at its rate
    latency = per_answer / (1.0 - failed) if failed < 1.0 else per_answer
    return Estimate(latency=latency, rate=rate, throughput=rate, in_flight=rate * per_answer, evidence=100.0,
                    measured=latency, answers=1, failed_share=failed)


def test_goodput_capacity_is_capacity_times_success_share() -> None:
    assert est(0.0).goodput_capacity == est(0.0).capacity
    assert abs(est(0.3).goodput_capacity - 0.7 * est(0.0).capacity) < 0.02 * est(0.0).capacity
    assert est(1.0).goodput_capacity == 0.0


def test_a_host_failing_30_percent_gets_clearly_less_than_a_healthy_one() -> None:
    weights = target_weights({"a": est(0.0), "b": est(0.0), "c": est(0.0), "bad": est(0.3)}, PARAMS)
    assert weights["a"] == weights["b"] == weights["c"] == 1000
    assert weights["bad"] <= 700, weights  # before: ~960 (the inflation read as queueing)


def test_no_errors_no_change() -> None:
    weights = target_weights({h: est(0.0) for h in ("a", "b", "c", "d")}, PARAMS)
    assert set(weights.values()) == {1000}, weights


def test_a_host_failing_everything_goes_to_the_floor() -> None:
    weights = target_weights({"a": est(0.0), "b": est(0.0), "c": est(0.0), "bad": est(1.0)}, PARAMS)
    assert weights["bad"] <= PARAMS.floor, weights
