"""A running agent's admin endpoint, the `status` command, and the Prometheus metrics it exposes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import requests
from modelarts_emulator import Emulator
from prometheus_client.parser import text_string_to_metric_families

from agent.app.run import AgentRuntime
from agent.config import parse_config
from tests.integration.conftest import agent_config

pytestmark = pytest.mark.usefixtures("creds_env")


@pytest.fixture
def runtime(emulator: Emulator):  # type: ignore[no-untyped-def]
    # A service name no other test uses: metrics are process-global.
    base = agent_config(emulator, "password", services=[{"name": "metered", "service_id": "svc-llm"}])
    config = parse_config({**base.model_dump(mode="json"), "admin": {"port": 0},
                           "budget": {"per_user_per_minute": 120, "safety_margin_seconds": 0}})
    rt = AgentRuntime(config)
    rt.start()
    deadline = time.monotonic() + 15
    while not rt.store.ready() and time.monotonic() < deadline:
        time.sleep(0.1)
    yield rt
    rt.stop()


def metrics(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(requests.get(url + "/metrics", timeout=2).text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def test_health_ready_and_metrics(runtime: AgentRuntime) -> None:
    url = runtime.admin.url
    assert requests.get(url + "/healthz", timeout=2).status_code == 200
    assert requests.get(url + "/readyz", timeout=2).status_code == 200
    found = metrics(url)
    calls = {labels["result"]: value for labels, value in found["modelarts_agent_discovery_calls_total"]
             if labels["service"] == "metered"}
    assert calls.get("success", 0) >= 1
    assert ({"service": "metered", "state": "ready"}, 3.0) in found["modelarts_agent_endpoints"]
    # Earlier tests' budget registries may still be alive in this process: find this runtime's (limit 120).
    limits = [value for _, value in found["modelarts_agent_budget_limit_per_window"]]
    index = limits.index(120)
    assert found["modelarts_agent_budget_calls_total"][index][1] >= 1
    assert found["modelarts_agent_budget_tokens_left"][index][1] < 120
    synced = dict((labels["service"], value)
                  for labels, value in found["modelarts_agent_last_successful_sync_timestamp_seconds"])
    assert synced["metered"] > time.time() - 60
    assert "modelarts_agent_discovery_duration_seconds_bucket" in found


def test_status_command_table_and_json(runtime: AgentRuntime) -> None:
    env = {**os.environ}
    table = subprocess.run([sys.executable, "-m", "agent", "status", "--admin", runtime.admin.url],
                           capture_output=True, text=True, timeout=30, env=env)
    assert table.returncode == 0, table.stderr
    assert "metered" in table.stdout and "fresh" in table.stdout and "svc-llm" in table.stdout
    raw = subprocess.run([sys.executable, "-m", "agent", "status", "--admin", runtime.admin.url, "--json"],
                         capture_output=True, text=True, timeout=30, env=env)
    data = json.loads(raw.stdout)
    assert data["services"][0]["endpoint_count"] == 3 and data["ready"] is True
    assert data["budgets"][0]["identity"].startswith("user:")


def test_status_command_unreachable_agent() -> None:
    result = subprocess.run([sys.executable, "-m", "agent", "status", "--admin", "http://127.0.0.1:9"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "cannot reach the agent" in result.stderr and "Traceback" not in result.stderr


def test_readyz_is_503_before_any_sync(emulator: Emulator) -> None:
    emulator.admin.inject_fault("5xx", service_id="svc-llm")
    base = agent_config(emulator, "password")
    config = parse_config({**base.model_dump(mode="json"), "admin": {"port": 0}})
    rt = AgentRuntime(config)
    rt.start()
    try:
        time.sleep(4)
        assert requests.get(rt.admin.url + "/readyz", timeout=2).status_code == 503
        assert requests.get(rt.admin.url + "/healthz", timeout=2).status_code == 200
    finally:
        rt.stop()


def test_state_file_serves_last_known_good_after_a_restart(emulator: Emulator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    state = tmp_path / "state.json"
    base = agent_config(emulator, "password", services=[{"name": "persisted", "service_id": "svc-llm"}])
    config = parse_config({**base.model_dump(mode="json"), "admin": {"port": 0},
                           "discovery": {**base.discovery.model_dump(mode="json"), "state_file": str(state)}})
    first = AgentRuntime(config)
    first.start()
    try:
        deadline = time.monotonic() + 15
        while "persisted" not in (state.read_text() if state.exists() else "") and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        first.stop()
    expected = first.store.snapshot.services["persisted"].endpoints
    assert len(expected) == 3 and state.exists()
    # ModelArts is down when the agent comes back: it is ready at once, from the file.
    emulator.admin.inject_fault("5xx", service_id="svc-llm")
    second = AgentRuntime(config)
    assert second.store.snapshot.services["persisted"].endpoints == expected
    second.start()
    try:
        assert requests.get(second.admin.url + "/readyz", timeout=2).status_code == 200
    finally:
        second.stop()
    # A state file for another service id is ignored.
    other = parse_config({**config.model_dump(mode="json"),
                          "services": [{"name": "persisted", "service_id": "another-id"}]})
    assert AgentRuntime(other).store.snapshot.services["persisted"].endpoints == ()
