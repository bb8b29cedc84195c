"""`lb.adaptive` defaults to "auto": on for least_request over http/https/grpc, off otherwise, and the loop
only runs when some sink can take weights (an Envoy fed by files or ADS)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from agent.adaptive.runner import AdaptiveRunner
from agent.config import AgentConfig, ConfigError, parse_config
from agent.model import Snapshot


def config(**service: Any) -> AgentConfig:
    return parse_config({
        "modelarts": {"iam_url": "http://127.0.0.1:9", "modelarts_url": "http://127.0.0.1:9", "project_id": "p"},
        "auth": {"mode": "token"},
        "envoy": {"admin_port": 9},  # nothing listens there: reads fail, nothing is published
        "services": [{"name": "llm", "service_id": "s", **service}],
    }, "test")


@pytest.mark.parametrize(("service", "adaptive"), [
    ({}, True),  # least_request, protocol auto
    ({"protocol": "http"}, True),
    ({"protocol": "grpc"}, True),
    ({"protocol": "https"}, True),
    ({"protocol": "tcp"}, False),  # no requests to time
    ({"lb": {"policy": "round_robin"}}, False),
    ({"lb": {"policy": "ring_hash", "hash_key": {"header": "x-user"}}}, False),
    ({"lb": {"adaptive": False}}, False),
    ({"protocol": "tcp", "lb": {"adaptive": True}}, True),  # an explicit choice wins
])
def test_auto_resolves_per_service(service: dict[str, Any], adaptive: bool) -> None:
    assert config(**service).services[0].adaptive_lb is adaptive


def test_explicit_adaptive_needs_least_request() -> None:
    with pytest.raises(ConfigError, match="adaptive needs policy least_request"):
        config(lb={"policy": "round_robin", "adaptive": True})


def test_a_misspelt_mode_is_refused() -> None:
    with pytest.raises(ConfigError, match="adaptive"):
        config(lb={"adaptive": "sometimes"})


class WeightSink:
    name = "weights"

    def publish(self, snapshot: Snapshot) -> None:
        pass

    def update_weights(self, weights: Mapping[str, Mapping[str, int]]) -> None:
        pass


class PlainSink:
    name = "plain"

    def publish(self, snapshot: Snapshot) -> None:
        pass


def test_loop_runs_only_with_a_sink_that_takes_weights() -> None:
    plain = AdaptiveRunner(lambda: [PlainSink()])
    plain.apply(config())
    assert plain.loop is None  # Kubernetes or state file only: nothing to steer, no Envoy to read
    steering = AdaptiveRunner(lambda: [PlainSink(), WeightSink()])
    try:
        steering.apply(config())
        assert steering.loop is not None
    finally:
        steering.stop()
