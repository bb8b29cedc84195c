"""The per-endpoint estimator: Little's law on sampled counters, peak on degradation, slow good news."""

from __future__ import annotations

import pytest

from agent.adaptive.estimator import EndpointEstimator, service_time
from agent.adaptive.sampling import HostSample
from tests.adaptive.sim import SimHost

PRIOR = 0.010


def test_little_law_recovers_the_latency() -> None:
    host = SimHost(rate=40, latency=0.012)
    host.run(0, 30)
    estimate = host.estimator.estimate(PRIOR)
    assert estimate.latency == pytest.approx(0.012, rel=0.15)
    assert estimate.rate == pytest.approx(40, rel=0.15)


def test_a_slow_instance_looks_slow_and_has_less_capacity() -> None:
    fast, slow = SimHost(rate=45, latency=0.012, seed=2), SimHost(rate=1, latency=0.050, seed=3)
    fast.run(0, 30, prior=PRIOR)
    slow.run(0, 30, prior=PRIOR)
    f, s = fast.estimator.estimate(PRIOR), slow.estimator.estimate(PRIOR)
    assert s.latency > 2.5 * f.latency
    assert s.capacity < f.capacity / 2.5


def test_degradation_is_noticed_within_seconds() -> None:
    host = SimHost(rate=40, latency=0.010, seed=4)
    now = host.run(0, 30, prior=PRIOR)
    host.latency = 0.200  # the instance slowed down and a queue builds
    host.run(now, 2.5, prior=PRIOR)
    assert host.estimator.estimate(PRIOR).latency > 0.08


def test_good_news_is_believed_slowly_but_surely() -> None:
    """After a bad spell the estimate decays back; the bad spell (capped) does not stick for minutes."""
    host = SimHost(rate=40, latency=0.500, seed=5)  # a queue blow-up: half a second per request
    now = host.run(0, 10, prior=PRIOR)
    host.latency, host.rate = 0.010, 1.0  # recovered, and only probe traffic reaches it now
    now = host.run(now, 5, prior=PRIOR)
    assert host.estimator.estimate(PRIOR).latency > 0.03  # not believed at once
    host.run(now, 60, prior=PRIOR)
    assert host.estimator.estimate(PRIOR).latency < 0.02  # but within a minute


def test_a_starved_instance_drifts_back_to_the_prior() -> None:
    """No traffic while the service is busy: its evidence decays, so it is probed again (starvation guard)."""
    host = SimHost(rate=20, latency=0.100, seed=6)
    now = host.run(0, 20, prior=PRIOR)
    assert host.estimator.estimate(PRIOR).latency > 0.05
    host.rate = 0.0  # no request reaches it any more
    host.run(now, 120, prior=PRIOR)
    assert host.estimator.estimate(PRIOR).latency < 2 * PRIOR


def test_pause_freezes_the_estimate() -> None:
    """A quiet service forgets nothing: estimates age with traffic, not with the clock."""
    host = SimHost(rate=20, latency=0.100, seed=7)
    now = host.run(0, 20, prior=PRIOR)
    before = host.estimator.estimate(PRIOR).latency
    for _ in range(1000):  # 100 s of idle reads
        now += 0.1
        host.estimator.pause(now)
    host.estimator.observe(now + 0.05, HostSample(active=0), PRIOR)
    assert host.estimator.estimate(PRIOR).latency == pytest.approx(before, rel=0.05)


def test_a_stuck_host_looks_slow_even_without_answers() -> None:
    estimator = EndpointEstimator()
    now = 0.0
    for _ in range(60):  # 3 s with 5 requests hanging, none answered
        now += 0.05
        estimator.observe(now, HostSample(active=5), PRIOR)
    assert estimator.estimate(PRIOR).latency > 1.0


def test_errors_do_not_make_a_host_look_fast() -> None:
    ok, failing = EndpointEstimator(), EndpointEstimator()
    now = 0.0
    for _ in range(400):
        now += 0.05
        ok.observe(now, HostSample(sent=2, succeeded=2, active=1), PRIOR)
        failing.observe(now, HostSample(sent=2, succeeded=1, failed=1, active=1), PRIOR)
    assert failing.estimate(PRIOR).latency == pytest.approx(2 * ok.estimate(PRIOR).latency, rel=0.05)


@pytest.mark.parametrize(("latency", "throughput", "expected"), [
    (0.010, 0.0, 0.010),  # idle: all of it is service
    (0.0141, 45.0, 0.010),  # M/D/1 with s = 10 ms at 45 rps: 14.1 ms
    (1.0, 20.0, 0.049),  # saturated: about 1/throughput
])
def test_service_time_inverts_the_queue(latency: float, throughput: float, expected: float) -> None:
    assert service_time(latency, throughput) == pytest.approx(expected, rel=0.03)
