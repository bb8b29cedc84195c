"""After a drain, every view says why a service has no endpoints: /status, `modelarts-agent status`, /readyz.

The emulator's service keeps reporting `running` while its instance list goes empty (the case the
last-known-good rules confirm before believing). Once drained, the agent has nothing to route to:
/readyz is 503 and names the service and the reason; with a second service that still has
endpoints it stays 200 (one empty service must not take a multi-service sidecar out of rotation),
and /status and the CLI table still name the drained one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from modelarts_emulator import Emulator, EmulatorConfig
from rich.console import Console

from agent.app.run import AgentRuntime
from agent.cli.status_cmd import render
from agent.config import parse_config
from tests.integration.conftest import agent_config

REASON = "ModelArts reports the service running with no instances"


def wait_until(predicate: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    return predicate()


@pytest.fixture
def two_services(creds_env: None) -> Iterator[Emulator]:
    config = EmulatorConfig.model_validate({"services": [
        {"name": "llm", "service_id": "svc-llm", "instances": 2},
        {"name": "embed", "service_id": "svc-embed", "instances": 1}]})
    with Emulator(config) as emu:
        yield emu


def start_agent(emu: Emulator, services: list[dict[str, str]]) -> AgentRuntime:
    base = agent_config(emu, "password", services=services,
                        budget={"per_user_per_minute": 600, "safety_margin_seconds": 0})
    runtime = AgentRuntime(parse_config({**base.model_dump(mode="json"), "admin": {"port": 0}}))
    runtime.start()
    return runtime


def service(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in status["services"] if s["name"] == name)


def readyz(runtime: AgentRuntime) -> requests.Response:
    return requests.get(runtime.admin.url + "/readyz", timeout=5)


def cli_table(status: dict[str, Any]) -> str:
    console = Console(width=300, record=True)
    console.print(render(status))
    return console.export_text()


def test_a_drained_only_service_makes_readyz_503_and_every_view_says_why(two_services: Emulator) -> None:
    runtime = start_agent(two_services, [{"name": "llm", "service_id": "svc-llm"}])
    try:
        assert wait_until(lambda: readyz(runtime).status_code == 200, 15)
        two_services.admin.scale("svc-llm", 0, wait=True)  # still "running", no instance listed
        drained = wait_until(lambda: (lambda s: s if s["endpoint_count"] == 0 and s["synced"] else None)(
            service(runtime.status(), "llm")), 20)
        assert drained, runtime.status()
        assert drained["no_endpoints_reason"].startswith(REASON)
        assert "consecutive empty answers" in drained["no_endpoints_reason"]
        answer = readyz(runtime)
        assert answer.status_code == 503
        assert answer.text.startswith("not ready: llm: " + REASON)
        table = cli_table(requests.get(runtime.admin.url + "/status", timeout=5).json())
        assert "no endpoints" in table and REASON in table and "NOT ready" in table
        # Instances come back: the reason goes away and the agent is ready again.
        two_services.admin.scale("svc-llm", 2, wait=True)
        assert wait_until(lambda: readyz(runtime).status_code == 200, 20)
        assert service(runtime.status(), "llm")["no_endpoints_reason"] is None
    finally:
        runtime.stop()


def test_one_drained_service_of_two_keeps_readyz_200_but_is_named(two_services: Emulator) -> None:
    runtime = start_agent(two_services, [{"name": "llm", "service_id": "svc-llm"},
                                         {"name": "embed", "service_id": "svc-embed"}])
    try:
        assert wait_until(lambda: all(s["endpoint_count"] for s in runtime.status()["services"]), 15)
        two_services.admin.scale("svc-llm", 0, wait=True)
        assert wait_until(lambda: service(runtime.status(), "llm")["no_endpoints_reason"], 20), runtime.status()
        assert readyz(runtime).status_code == 200
        assert runtime.store.without_endpoints() == [("llm", service(runtime.status(), "llm")["no_endpoints_reason"])]
        table = cli_table(runtime.status())
        assert "no endpoints" in table and REASON in table
    finally:
        runtime.stop()
