"""The feedback loop with a fake Envoy (counters from a tiny model) and a fake clock: no threads, no sleeps."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping

import pytest

from agent.adaptive.envoy_admin import AdminReadError, ClusterHosts, HostCounters
from agent.adaptive.feedback import FeedbackLoop, admin_urls
from agent.adaptive.table import WeightTable
from agent.config import AgentConfig, parse_config

URL = "http://127.0.0.1:9901"


def config(adaptive: bool = True, **adaptive_options: object) -> AgentConfig:
    return parse_config({
        "modelarts": {"iam_url": "http://127.0.0.1:9", "modelarts_url": "http://127.0.0.1:9", "project_id": "p"},
        "auth": {"mode": "token"},
        "services": [{"name": "llm", "service_id": "s", "listen_port": 10080,
                      "lb": {"policy": "least_request", "adaptive": adaptive}}],
        "adaptive": adaptive_options,
    }, "test")


class FakeEnvoy:
    """Hosts with a service time; requests arrive at `rate` and are spread by the published weights."""

    def __init__(self, latencies: Mapping[str, float], rate: float = 150.0, seed: int = 1) -> None:
        self.latencies = dict(latencies)
        self.rate = rate
        self.weights: Mapping[str, int] = {}
        self.counters = {h: HostCounters() for h in latencies}
        self.down = False
        self._rng = random.Random(seed)
        self._carry = dict.fromkeys(latencies, 0.0)

    @property
    def urls(self) -> tuple[str, ...]:
        return (URL,)

    def advance(self, dt: float) -> None:
        total = sum(self.weights.get(h, 1000) for h in self.latencies)
        for h, latency in self.latencies.items():
            share = self.weights.get(h, 1000) / total
            self._carry[h] += self.rate * share * dt
            n = int(self._carry[h])
            self._carry[h] -= n
            # In flight: Little's law, with a little noise (sampled counts are integers).
            active = int(self.rate * share * latency + self._rng.random())
            c = self.counters[h]
            self.counters[h] = HostCounters(c.rq_total + n, active, c.rq_success + n, c.rq_error)

    def read(self, clusters: Iterable[str]) -> dict[str, ClusterHosts]:
        if self.down:
            raise AdminReadError("connection refused")
        return {URL: {"llm": dict(self.counters)}} if "llm" in set(clusters) else {URL: {}}

    def close(self) -> None:
        pass


def drive(loop: FeedbackLoop, envoy: FakeEnvoy, seconds: float, start: float = 0.0, dt: float = 0.05) -> float:
    now = start
    for _ in range(round(seconds / dt)):
        now += dt
        envoy.advance(dt)
        loop.step(now)
    return now


@pytest.fixture
def rig() -> tuple[FeedbackLoop, FakeEnvoy, list[dict[str, dict[str, int]]]]:
    envoy = FakeEnvoy({"a:1": 0.010, "b:1": 0.010, "c:1": 0.010, "slow:1": 0.050})
    published: list[dict[str, dict[str, int]]] = []

    def publish(weights: Mapping[str, Mapping[str, int]]) -> None:
        published.append({s: dict(w) for s, w in weights.items()})
        envoy.weights = weights.get("llm", {})

    return FeedbackLoop(config(), WeightTable(), publish, reader=envoy), envoy, published


def test_slow_instance_gets_the_lightest_weight(rig: tuple[FeedbackLoop, FakeEnvoy, list]) -> None:
    loop, envoy, published = rig
    drive(loop, envoy, 20)
    weights = published[-1]["llm"]
    assert weights["slow:1"] * 50 <= weights["a:1"] == weights["b:1"] == weights["c:1"] == 1000
    assert loop.table.get("llm") == weights
    rows = {r["address"]: r for r in loop.table.rows("llm")}
    assert rows["slow:1"]["weight"] == weights["slow:1"]


def test_rewrites_are_rate_limited_and_only_on_change(rig: tuple[FeedbackLoop, FakeEnvoy, list]) -> None:
    loop, envoy, published = rig
    drive(loop, envoy, 60)
    # One update per second at most (update_interval_seconds = 1), and settled weights are not rewritten.
    assert len(published) <= 12
    count = len(published)
    drive(loop, envoy, 30, start=60)
    assert len(published) - count <= 2


def test_admin_failures_keep_the_weights(rig: tuple[FeedbackLoop, FakeEnvoy, list]) -> None:
    loop, envoy, published = rig
    now = drive(loop, envoy, 20)
    before, count = loop.table.get("llm"), len(published)
    envoy.down = True
    drive(loop, envoy, 10, start=now)
    assert loop.table.get("llm") == before and len(published) == count
    assert loop.reads_failed > 0 and loop.last_error


def test_turning_adaptive_off_drops_the_weights(rig: tuple[FeedbackLoop, FakeEnvoy, list]) -> None:
    loop, envoy, published = rig
    drive(loop, envoy, 10)
    assert "llm" in published[-1]
    loop.update_config(config(adaptive=False))
    assert published[-1] == {} and loop.table.get("llm") is None
    assert loop.services == ()


def test_equal_instances_keep_equal_weights() -> None:
    envoy = FakeEnvoy({f"h{i}:1": 0.010 for i in range(4)}, seed=3)
    published: list[dict[str, dict[str, int]]] = []

    def publish(weights: Mapping[str, Mapping[str, int]]) -> None:
        published.append({s: dict(w) for s, w in weights.items()})
        envoy.weights = weights.get("llm", {})

    loop = FeedbackLoop(config(), WeightTable(), publish, reader=envoy)
    drive(loop, envoy, 60)
    assert all(set(p["llm"].values()) == {1000} for p in published)


def test_admin_urls_default_to_the_local_envoy() -> None:
    assert admin_urls(config()) == ("http://127.0.0.1:9901",)
    assert admin_urls(config(envoy_admin_urls=["http://10.0.0.5:9901/"])) == ("http://10.0.0.5:9901",)


def test_no_warning_while_envoy_is_still_starting(caplog: pytest.LogCaptureFixture) -> None:
    envoy = FakeEnvoy({"a:1": 0.010})
    envoy.down = True  # Envoy starts after the agent: its admin refuses connections at first
    loop = FeedbackLoop(config(), WeightTable(), lambda _w: None, reader=envoy)
    caplog.set_level("DEBUG", logger="agent.adaptive.feedback")
    for now in (0.0, 10.0, 29.0):
        loop.step(now)
    assert [r for r in caplog.records if r.levelname == "WARNING"] == []
    loop.step(31.0)  # still unreadable after the grace period: worth a warning
    assert [r.levelname for r in caplog.records].count("WARNING") == 1
    assert loop.reads_failed == 4


def test_a_failure_after_good_reads_warns_at_once(caplog: pytest.LogCaptureFixture) -> None:
    envoy = FakeEnvoy({"a:1": 0.010})
    loop = FeedbackLoop(config(), WeightTable(), lambda _w: None, reader=envoy)
    loop.step(0.0)
    envoy.down = True
    loop.step(1.0)
    assert [r.levelname for r in caplog.records if r.name == "agent.adaptive.feedback"] == ["WARNING"]
