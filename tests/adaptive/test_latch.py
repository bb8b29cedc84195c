"""The latch of issue 17: after an idle spell the loop could set a service's prior to exactly 0 and stay blind.

The mechanism: while idle the loop reads Envoy rarely; `pause()` sets each host's previous in-flight
count to 0; the first read after traffic starts can hold >= 20 successes of a host whose `rq_active`
happens to be 0, so that interval's busy time is 0, the host's measured latency 0.0 becomes the prior,
every later interval is capped at `succeeded x cap_factor x 0`, and the estimates stay near 0 for good.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.adaptive.envoy_admin import AdminReadError, ClusterHosts, HostCounters
from agent.adaptive.estimator import EndpointEstimator
from agent.adaptive.feedback import FeedbackLoop
from agent.adaptive.sampling import HostSample
from agent.adaptive.table import WeightTable
from tests.adaptive.cluster_sim import SERVICE, URL, ClusterSim, Instance, config, constant

FAST, SLOW = ("a:1", "b:1", "c:1"), "slow:1"


class ScriptedEnvoy:
    """Counters set by the test, read by the loop."""

    def __init__(self, hosts: Iterable[str]) -> None:
        self.counters = {h: HostCounters() for h in hosts}
        self.down = False

    @property
    def urls(self) -> tuple[str, ...]:
        return (URL,)

    def add(self, host: str, done: int, active: int) -> None:
        c = self.counters[host]
        self.counters[host] = HostCounters(c.rq_total + done, active, c.rq_success + done, c.rq_error)

    def fail(self, host: str, done: int, active: int) -> None:
        c = self.counters[host]
        self.counters[host] = HostCounters(c.rq_total + done, active, c.rq_success, c.rq_error + done)

    def read(self, clusters: Iterable[str]) -> dict[str, ClusterHosts]:
        if self.down:
            raise AdminReadError("connection refused")
        return {URL: {SERVICE: dict(self.counters)}}

    def close(self) -> None:
        pass


def test_first_read_after_idle_does_not_latch_the_loop() -> None:
    """The issue's reproduction: a sidecar that starts before its app, then traffic."""
    envoy = ScriptedEnvoy((*FAST, SLOW))
    published: list[dict[str, int]] = []
    loop = FeedbackLoop(config(), WeightTable(), lambda w: published.append(dict(w.get(SERVICE, {}))),
                        reader=envoy)
    now = 0.0
    for _ in range(10):  # idle: the loop reads every ~0.5 s
        now += 0.5
        loop.step(now)
    assert loop.idle
    # First read after traffic started: 25 answers each, the fast hosts happen to have nothing in flight.
    now += 0.6
    for host in FAST:
        envoy.add(host, 25, 0)
    envoy.add(SLOW, 20, 3)
    loop.step(now)
    # Then steady traffic, read every 50 ms: fast hosts 10 ms (in flight 0/1), the slow one 60 ms.
    for i in range(400):
        now += 0.05
        for host in FAST:
            envoy.add(host, 2, int(i % 3 == 0))
        envoy.add(SLOW, 2, 2 + i % 2)
        loop.step(now)
    rows = {r["address"]: r for r in loop.table.rows(SERVICE)}
    assert rows[SLOW]["latency_ms"] > 30  # about 60 ms; latched it showed ~2 ms
    assert all(3 <= rows[h]["latency_ms"] <= 30 for h in FAST)
    assert published and published[-1][SLOW] < published[-1][FAST[0]] == 1000
    assert loop.health(now)["state"] == "ok"



def test_a_short_burst_that_no_read_saw_in_flight_is_no_prior() -> None:
    """The other way to a 0 prior: >= 20 answers while every read found nothing in flight."""
    estimator = EndpointEstimator()
    estimator.observe(0.0, HostSample())
    for i in range(1, 12):
        estimator.observe(i * 0.05, HostSample(sent=2, succeeded=2, active=0))
    estimate = estimator.estimate(0.010)
    assert estimate.answers >= 20  # the answers the weights' no-rise-without-news rule counts
    assert estimator.measured_latency() is None  # 0 s per request is not a latency
    assert estimate.latency > 0 and math.isfinite(estimate.latency)


# One traffic phase of the property test: (seconds, requests/s; 0 = idle, reset: Envoy restarts first).
Phase = tuple[float, float, bool]
phases = st.lists(st.tuples(st.floats(0.5, 9.0), st.sampled_from([0.0, 0.0, 20.0, 80.0, 200.0]), st.booleans()),
                  min_size=2, max_size=4)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=phases, services=st.lists(st.sampled_from([0.004, 0.010, 0.025, 0.060]), min_size=2, max_size=4),
       slots=st.sampled_from([1, 4]), jitter=st.floats(0.02, 0.2), seed=st.integers(0, 2**16))
def test_estimates_stay_real_over_random_timings_idle_gaps_and_resets(
        script: list[Phase], services: list[float], slots: int, jitter: float, seed: int) -> None:
    """Never below (a sampling tolerance of) the smallest true service time, never 0/NaN, never blind."""
    sim = ClusterSim({f"h{i}:1": Instance(constant(s), slots=slots) for i, s in enumerate(services)},
                     rate=lambda t: rate_at(t), seed=seed, sample_interval=jitter)
    ends, now = [], 0.0
    for seconds, rate, _ in script:
        now += seconds
        ends.append((now, rate))
    resets = {i for i, (_, _, reset) in enumerate(script) if reset}

    def rate_at(t: float) -> float:
        return next((r for end, r in ends if t < end), 0.0)

    loop = sim.loop(sample_interval_seconds=jitter)
    floor = min(services)
    busy_since: list[float | None] = [None]

    def check(now: float, loop: FeedbackLoop) -> None:
        service = loop._services[SERVICE]
        if service.prior is not None:
            assert math.isfinite(service.prior) and service.prior >= 0.5 * floor, service.prior
        for address, estimator in service.estimators.items():
            latency = estimator.estimate(service.prior or 0.05).latency
            assert math.isfinite(latency) and latency >= 0.5 * floor, (address, latency)
        if rate_at(now) < 80:
            busy_since[0] = None
        elif busy_since[0] is None:
            busy_since[0] = now
        elif now - busy_since[0] >= 8:
            assert sim.in_flight() == 0 or service.prior is not None, "blind while requests are in flight"

    for i, (end, _) in enumerate(ends):
        if i in resets:
            sim.reset_at = set(sim.instances)
        sim.run(loop, end, on_read=check)
