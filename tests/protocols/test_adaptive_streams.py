"""What "load" means for a streaming service, checked against the adaptive estimator (agent/adaptive).

Load is streams in flight (Envoy's least_request counts them per pick, `rq_active`); speed is time to
first byte (the first token), which Envoy's timing access logger counts per host for the loop
(agent/envoy/access_log.py `adaptive_timing_logs`). How long a stream lasts is the client's choice, not
the instance's speed. Before, the estimator took time in flight per answer (Little's law) as a host's
latency, so a host carrying one 2-minute generation looked 3.5x slower than an identical one (this file
held a strict xfail for it); with per-request times it does not.
"""

from __future__ import annotations

import pytest

from agent.adaptive.estimator import EndpointEstimator
from agent.adaptive.sampling import HostSample

READ = 0.05  # the loop's default sample interval
UNARY_SECONDS = 0.02  # both hosts answer a unary call in 20 ms


def _drive(estimators: dict[str, EndpointEstimator], streams: dict[str, int], seconds: float,
           timing: bool = True, start: float = 0.0) -> float:
    """20 unary calls/s on each host (one per read, in flight 40% of the time: 20 ms of every 50 ms),
    plus `streams[host]` generations that stay open throughout (in flight, not yet answered). With
    `timing`, Envoy's timing logger reports each answered call's time to first byte."""
    now = start
    for index in range(int(seconds / READ)):
        now += READ
        unary_in_flight = 1 if index % 5 in (0, 2) else 0  # 2 reads in 5 see the call: 0.4 on average
        for host, estimator in estimators.items():
            estimator.observe(now, HostSample(sent=1, succeeded=1, active=unary_in_flight + streams[host],
                                              timed=1 if timing else 0,
                                              timed_seconds=UNARY_SECONDS if timing else 0.0, timing=timing))
    return now


def test_an_open_long_stream_does_not_make_an_identical_host_look_slow() -> None:
    estimators = {"a": EndpointEstimator(), "b": EndpointEstimator()}
    _drive(estimators, {"a": 1, "b": 0}, seconds=30.0)  # 30 s into a 2-minute generation on host a
    prior = estimators["b"].measured_latency()
    assert prior == pytest.approx(UNARY_SECONDS, rel=0.05)
    a, b = estimators["a"].estimate(prior), estimators["b"].estimate(prior)
    assert a.latency == pytest.approx(b.latency, rel=0.05), (a.latency, b.latency)
    assert a.in_flight > b.in_flight + 0.9  # the stream is still load: in flight, which least_request sees


def test_counters_alone_cannot_tell_a_stream_from_slowness() -> None:
    """The control, and why the timing logger is needed: through in-flight counts alone, the same open
    stream makes host a look ~3.5x slower (an Envoy without the logger, e.g. an older config)."""
    estimators = {"a": EndpointEstimator(), "b": EndpointEstimator()}
    _drive(estimators, {"a": 1, "b": 0}, seconds=30.0, timing=False)
    prior = estimators["b"].measured_latency()
    assert prior is not None
    a, b = estimators["a"].estimate(prior), estimators["b"].estimate(prior)
    assert a.latency > 3 * b.latency


def test_a_host_holding_only_open_streams_is_not_taken_for_a_stuck_one() -> None:
    """Three generations open for a minute, a new one every 10 s, none answered yet: load, not a stuck
    host (before, in-flight time with no answers for >= 1 s counted as slowness)."""
    host = EndpointEstimator()
    now = 0.0
    for index in range(int(60 / READ)):
        now += READ
        new = 1 if index % 200 == 0 else 0
        host.observe(now, HostSample(sent=new, active=3, timing=True), prior=UNARY_SECONDS)
    assert host.estimate(UNARY_SECONDS).latency == pytest.approx(UNARY_SECONDS)


def test_a_finished_stream_counts_by_its_time_to_first_token() -> None:
    """A 2-minute generation whose first token came after 300 ms adds 300 ms of evidence, not 2 minutes."""
    streamer, other = EndpointEstimator(), EndpointEstimator()
    now = _drive({"a": streamer, "b": other}, {"a": 1, "b": 0}, seconds=120.0)
    now += READ
    streamer.observe(now, HostSample(sent=1, succeeded=2, active=0, timed=2, timed_seconds=UNARY_SECONDS + 0.3,
                                     timing=True))
    other.observe(now, HostSample(sent=1, succeeded=1, active=0, timed=1, timed_seconds=UNARY_SECONDS, timing=True))
    prior = other.measured_latency()
    assert prior is not None
    assert streamer.estimate(prior).latency < 1.1 * other.estimate(prior).latency


def test_without_streams_identical_hosts_look_identical() -> None:
    """The same traffic minus the stream gives equal estimates, with or without per-request times."""
    for timing in (True, False):
        estimators = {"a": EndpointEstimator(), "b": EndpointEstimator()}
        _drive(estimators, {"a": 0, "b": 0}, seconds=30.0, timing=timing)
        prior = estimators["b"].measured_latency()
        assert prior is not None
        a, b = estimators["a"].estimate(prior), estimators["b"].estimate(prior)
        assert a.latency == pytest.approx(b.latency, rel=0.01)
