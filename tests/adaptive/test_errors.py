"""Failures as a signal: a fast instance that fails 30 % of its answers looked only 1/0.7 slower per success,
inside the top group's 1.5x tolerance, so it kept the heaviest weight (the breaker mix: adaptive 1.36x the
errors of least_request). A host failing >= 5 % of its answers is judged by its own goodput capacity."""

from __future__ import annotations

import pytest

from agent.adaptive.estimator import EndpointEstimator, Estimate
from agent.adaptive.sampling import HostSample
from agent.adaptive.weights import ServiceWeights, WeightParams, target_weights

PARAMS = WeightParams()
SERVICE_TIME = 0.010


def est(failed: float, answers: int = 1, recent: float | None = None, rate: float = 40.0) -> Estimate:
    """A host as the estimator reports it: time per success is the service time / success ratio."""
    latency = SERVICE_TIME / (1.0 - failed)
    return Estimate(latency=latency, rate=rate, throughput=rate, in_flight=rate * latency, evidence=100.0,
                    measured=latency, answers=answers, failed_share=failed, recent=recent)


def test_a_host_failing_30_percent_loses_weight() -> None:
    weights = target_weights({"a": est(0.0), "b": est(0.0), "c": est(0.0), "bad": est(0.3)}, PARAMS)
    assert weights["a"] == weights["b"] == weights["c"] == 1000
    assert weights["bad"] <= 750, weights  # before: 1000, snapped to the best (here: 579 at 40 % load)


def test_a_few_failures_do_not_move_a_weight() -> None:
    weights = target_weights({"a": est(0.0), "b": est(0.0), "c": est(0.0), "d": est(0.01)}, PARAMS)
    assert set(weights.values()) == {1000}, weights


def test_hosts_failing_alike_keep_equal_weights() -> None:
    """Every host fails 20 % (the requests, not a host): nobody is singled out."""
    weights = target_weights({h: est(0.2) for h in ("a", "b", "c", "d")}, PARAMS)
    assert set(weights.values()) == {1000}, weights


def test_a_floored_failing_host_does_not_climb_back_on_its_answered_requests() -> None:
    """At 10 % load it is floored. Its recent view times only the answers with a body (as fast as the
    best); with the failures charged too it stays on the floor instead of climbing at every update."""
    weights = ServiceWeights(PARAMS)
    first = weights.propose({"a": est(0.0, rate=10), "b": est(0.0, rate=10), "c": est(0.0, rate=10),
                             "bad": est(0.3, rate=10)})
    assert first is not None and first["bad"] <= PARAMS.floor, first
    for n in range(2, 8):
        weights.propose({"a": est(0.0, n, rate=10), "b": est(0.0, n, rate=10), "c": est(0.0, n, rate=10),
                         "bad": est(0.3, n, recent=SERVICE_TIME, rate=0.5)})
        assert weights.published["bad"] == first["bad"], weights.published


def test_the_estimator_reports_the_failed_share() -> None:
    host = EndpointEstimator()
    now = 0.0
    for index in range(400):
        now += 0.05
        failed = 1 if index % 10 < 3 else 0
        host.observe(now, HostSample(sent=1, succeeded=1 - failed, failed=failed, active=0, timed=1 - failed,
                                     timed_seconds=SERVICE_TIME * (1 - failed), timing=True), prior=SERVICE_TIME)
    e = host.estimate(SERVICE_TIME)
    assert e.failed_share == pytest.approx(0.3, abs=0.03)
    assert e.latency == pytest.approx(SERVICE_TIME / 0.7, rel=0.05)
