"""The loop health signal: /status, a metric and an alert say when the loop is stale, blind or latched."""

from __future__ import annotations

import pytest

from agent.adaptive import estimator as estimator_module
from agent.adaptive.feedback import FeedbackLoop
from agent.adaptive.health import BLIND_SECONDS, STALE_SECONDS
from agent.adaptive.sampling import HostSample
from agent.adaptive.table import WeightTable
from agent.metrics import REGISTRY
from tests.adaptive.cluster_sim import SERVICE, ClusterSim, Instance, config, constant
from tests.adaptive.test_latch import FAST, SLOW, ScriptedEnvoy


def state_metric(state: str) -> float | None:
    return REGISTRY.get_sample_value("modelarts_agent_adaptive_loop_state", {"state": state})


def test_a_healthy_loop_is_ok_and_says_so_in_the_metric() -> None:
    sim = ClusterSim({f"h{i}:1": Instance(constant(0.010)) for i in range(4)}, rate=150)
    loop = sim.loop()
    sim.run(loop, 20)
    assert loop.health()["state"] == "ok"
    assert state_metric("ok") == 1 and state_metric("stale") == 0


def test_an_unreadable_admin_makes_the_loop_stale() -> None:
    envoy = ScriptedEnvoy((*FAST, SLOW))
    loop = FeedbackLoop(config(), WeightTable(), lambda _w: None, reader=envoy, clock=lambda: 0.0)
    loop.step(0.0)
    assert loop.health(0.0)["state"] == "ok"
    envoy.down = True
    for t in range(1, int(STALE_SECONDS) + 2):
        loop.step(float(t))
    health = loop.health(STALE_SECONDS + 1)
    assert health["state"] == "stale" and "no good read" in str(health["reason"])
    assert state_metric("stale") == 1 and state_metric("ok") == 0


def test_never_readable_is_starting_then_stale() -> None:
    envoy = ScriptedEnvoy((*FAST, SLOW))
    envoy.down = True
    loop = FeedbackLoop(config(), WeightTable(), lambda _w: None, reader=envoy)
    loop.step(0.0)
    assert loop.health(10.0)["state"] == "starting"
    assert loop.health(31.0)["state"] == "stale"


def test_traffic_with_no_measured_latency_is_blind() -> None:
    """Requests in flight and sent for a long time, none answered successfully: nothing to measure."""
    envoy = ScriptedEnvoy((*FAST, SLOW))
    loop = FeedbackLoop(config(), WeightTable(), lambda _w: None, reader=envoy)
    now = 0.0
    while now < BLIND_SECONDS + 3:
        now += 0.05
        for host in (*FAST, SLOW):
            envoy.fail(host, 1, active=2)
        loop.step(now)
    health = loop.health(now)
    assert health["state"] == "blind", health
    assert health["services"][SERVICE]["state"] == "blind"  # type: ignore[index]


def test_the_latch_of_issue_17_would_have_been_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """The estimator as it was at 8649ddf (pause -> in flight 0, a 0 s latency as the prior): latched."""
    def old_pause(self: estimator_module.EndpointEstimator, now: float) -> None:
        self._last_time, self._last_active = now, 0

    def old_measured(self: estimator_module.EndpointEstimator) -> float | None:
        return self._slow.latency() if self._slow.succeeded >= self.params.confident_requests else None

    def old_estimate(self: estimator_module.EndpointEstimator, prior: float) -> estimator_module.Estimate:
        p, slow = self.params, self._slow
        latency = (slow.busy + p.prior_requests * prior) / (slow.succeeded + p.prior_requests)
        span = max(slow.span, 1e-9)
        return estimator_module.Estimate(latency=latency, rate=slow.sent / span, throughput=slow.throughput(),
                                         in_flight=slow.busy / span, evidence=slow.succeeded,
                                         measured=slow.latency())

    def old_observe(self: estimator_module.EndpointEstimator, now: float, sample: HostSample,
                    prior: float | None = None) -> None:
        if self._last_time is None:
            self._last_time, self._last_active = now, sample.active
            return
        dt = now - self._last_time
        if dt <= 0:
            return
        busy = dt * (self._last_active + sample.active) / 2.0
        p = self.params
        capped = busy if prior is None else min(busy, max(sample.succeeded, 1) * p.cap_factor * prior)
        self._slow.add(dt, sample, capped, 0.0)
        self._fast.add(dt, sample, busy, 0.0)
        fast, slow = self._fast.latency(), self._slow.latency()
        if self._fast.succeeded >= p.fast_min_requests and fast is not None and slow is not None \
                and fast > p.peak_factor * slow:
            self._slow.adopt(self._fast, None if prior is None else self._fast.succeeded * p.cap_factor * prior)
        self._last_time, self._last_active = now, sample.active

    monkeypatch.setattr(estimator_module.EndpointEstimator, "observe", old_observe)
    monkeypatch.setattr(estimator_module.EndpointEstimator, "pause", old_pause)
    monkeypatch.setattr(estimator_module.EndpointEstimator, "measured_latency", old_measured)
    monkeypatch.setattr(estimator_module.EndpointEstimator, "estimate", old_estimate)
    envoy = ScriptedEnvoy((*FAST, SLOW))
    loop = FeedbackLoop(config(), WeightTable(), lambda _w: None, reader=envoy)
    now = 0.0
    for _ in range(10):
        now += 0.5
        loop.step(now)
    now += 0.6
    for host in FAST:
        envoy.add(host, 25, 0)
    envoy.add(SLOW, 20, 3)
    loop.step(now)
    for i in range(400):
        now += 0.05
        for host in FAST:
            envoy.add(host, 2, int(i % 3 == 0))
        envoy.add(SLOW, 2, 2 + i % 2)
        loop.step(now)
    health = loop.health(now)
    assert health["state"] == "latched", health
    assert loop.table.rows(SERVICE)[0]["latency_ms"] < 5  # the latch itself: ~2 ms for every host
