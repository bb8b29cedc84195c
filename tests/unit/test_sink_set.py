"""SinkSet: one process's sinks; what each sink can do beyond `publish` is a protocol it satisfies, not a getattr."""

from __future__ import annotations

import threading

from agent.config import AgentConfig, parse_config
from agent.model import Snapshot
from agent.sinks import Closable, Reconfigurable, Weighted
from agent.sinks.runner import SinkSet
from tests.unit.test_sink_runner import make_store, wait_until


class PlainSink:
    name = "plain"

    def __init__(self) -> None:
        self.published: list[int] = []

    def publish(self, snapshot: Snapshot) -> None:
        self.published.append(snapshot.version)


class FullSink(PlainSink):
    name = "full"

    def __init__(self) -> None:
        super().__init__()
        self.configs: list[AgentConfig] = []
        self.closed = 0

    def update_config(self, config: AgentConfig) -> None:
        self.configs.append(config)

    def update_weights(self, weights: object) -> None:
        pass

    def close(self) -> None:
        self.closed += 1


CONFIG = parse_config({"modelarts": {"iam_url": "http://127.0.0.1:9", "modelarts_url": "http://127.0.0.1:9",
                                     "project_id": "p"}, "auth": {"mode": "token"},
                       "services": [{"name": "llm", "service_id": "sid"}]}, "test")


def test_capabilities_are_protocols() -> None:
    plain, full = PlainSink(), FullSink()
    assert not any(isinstance(plain, capability) for capability in (Reconfigurable, Weighted, Closable))
    assert isinstance(full, Reconfigurable) and isinstance(full, Weighted) and isinstance(full, Closable)


def test_a_config_reaches_the_sinks_that_take_one_and_every_sink_republishes() -> None:
    store = make_store()
    plain, full = PlainSink(), FullSink()
    stop = threading.Event()
    sinks = SinkSet([plain, full], store, stop)
    sinks.start()
    try:
        assert wait_until(lambda: plain.published and full.published)
        before = (len(plain.published), len(full.published))
        sinks.apply_config(CONFIG)
        assert full.configs == [CONFIG]
        # The snapshot did not change, yet both publish again (the new policy must be rendered).
        assert wait_until(lambda: len(plain.published) > before[0] and len(full.published) > before[1])
        assert [row["name"] for row in sinks.status()] == ["plain", "full"]
        assert all(row["published_version"] == store.snapshot.version for row in sinks.status())
    finally:
        stop.set()
        sinks.join(5)
    sinks.close()
    assert full.closed == 1

