"""The whole file-mode pipeline: emulated ModelArts -> agent runtime -> EnvoyFileSink -> real Envoy -> instances."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from modelarts_emulator import Emulator, EmulatorConfig
from modelarts_emulator.config import DEFAULT_DOMAIN, DEFAULT_PASSWORD, DEFAULT_PROJECT_ID, DEFAULT_USER

from agent.app.run import AgentRuntime
from agent.config import parse_config
from agent.sinks.factory import sinks_for
from tests.envoy.conftest import StartEnvoy
from tests.envoy.harness import free_port, send_requests, wait_until

pytestmark = pytest.mark.envoy


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    config = EmulatorConfig.model_validate({"services": [{"name": "llm", "service_id": "svc-llm", "instances": 3}]})
    with Emulator(config) as emu:
        yield emu


def test_emulated_instances_served_through_envoy(emulator: Emulator, out_dir: Path, admin_port: int,
                                                 start_envoy: StartEnvoy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELARTS_PASSWORD", DEFAULT_PASSWORD)
    port = free_port()
    config = parse_config({
        "modelarts": {"iam_url": emulator.iam_url, "modelarts_url": emulator.modelarts_url,
                      "project_id": DEFAULT_PROJECT_ID, "timeout_seconds": 2},
        "auth": {"mode": "password", "domain": DEFAULT_DOMAIN, "user": DEFAULT_USER},
        "discovery": {"allowed_cidrs": ["127.0.0.0/8"], "default_poll_interval_seconds": 1},
        "services": [{"name": "llm", "service_id": "svc-llm", "listen_port": port}],
        "envoy": {"output_dir": str(out_dir), "admin_port": admin_port},
        "admin": {"port": 0},
    })
    runtime = AgentRuntime(config, sink_factory=sinks_for)
    runtime.start()
    try:
        envoy = start_envoy(config)  # the sink prepared the directory when it was built
        ids = {i.instance_id: f"{i.ip}:{i.port}" for i in emulator.admin.instances("svc-llm")}
        envoy.wait_for_hosts({"llm": ids.values()}, timeout=10)
        result = send_requests(port, 90, concurrency=3)
        assert result.failures == []
        assert set(result.answered) == set(ids)
        emulator.admin.scale("svc-llm", 4, wait=True)
        grown = {i.instance_id for i in emulator.admin.instances("svc-llm")}
        assert len(grown) == 4
        # The next poll comes within the rate budget's interval (20 calls/min: about 3 s for one service).
        assert wait_until(lambda: set(send_requests(port, 20, concurrency=4).answered) == grown, timeout=10)
    finally:
        runtime.stop()
