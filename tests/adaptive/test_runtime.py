"""`AgentRuntime` wiring: the loop runs while a service is adaptive, /status shows weights, reloads apply."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.app.run import AgentRuntime
from agent.config import AgentConfig, parse_config
from agent.model import Snapshot


class RecordingSink:
    name = "recording"

    def __init__(self) -> None:
        self.weights: list[dict[str, dict[str, int]]] = []

    def publish(self, snapshot: Snapshot) -> None:
        pass

    def update_weights(self, weights: Mapping[str, Mapping[str, int]]) -> None:
        self.weights.append({s: dict(w) for s, w in weights.items()})


def config(adaptive: bool) -> AgentConfig:
    data: dict[str, Any] = {
        "modelarts": {"iam_url": "http://127.0.0.1:9", "modelarts_url": "http://127.0.0.1:9", "project_id": "p"},
        "auth": {"mode": "token"},
        "admin": {"port": 0},
        "envoy": {"admin_port": 9},  # nothing listens there: reads fail, weights stay as they are
        "services": [{"name": "llm", "service_id": "s", "lb": {"policy": "least_request", "adaptive": adaptive}}],
    }
    return parse_config(data, "test")


def test_runtime_runs_the_loop_only_for_adaptive_services(monkeypatch: Any) -> None:
    monkeypatch.setenv("MODELARTS_TOKEN", "t")
    sink = RecordingSink()
    runtime = AgentRuntime(config(adaptive=True), sink_factory=lambda _c: [sink])
    runtime.start()
    try:
        assert runtime.adaptive.loop is not None and runtime.adaptive.loop.running
        status = runtime.status()
        assert status["services"][0]["weights"] == []  # nothing measured yet, but the field is there
        assert status["adaptive"]["state"] == "starting"  # Envoy's admin not readable yet, within the grace
        runtime.reload(config(adaptive=False))
        assert runtime.adaptive.loop is None
        assert "weights" not in runtime.status()["services"][0]
        assert "adaptive" not in runtime.status()
        runtime.reload(config(adaptive=True))
        assert runtime.adaptive.loop is not None and runtime.adaptive.loop.running
    finally:
        runtime.stop()
    assert runtime.adaptive.loop is None
