"""The real `modelarts-agent run` process, the emulator and a real Envoy, end to end.

Covers what only a whole process can show: watchdog hot reload of the config file, scale-out
within one poll interval + 2 s, scale-in that lets in-flight requests finish, and Envoy serving
on its last config after the agent is SIGKILLed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from modelarts_emulator import Emulator, EmulatorConfig
from modelarts_emulator.config import DEFAULT_DOMAIN, DEFAULT_PASSWORD, DEFAULT_PROJECT_ID, DEFAULT_USER

from agent.config import load_config
from tests.envoy.conftest import StartEnvoy
from tests.envoy.harness import free_port, send_requests, wait_until


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    config = EmulatorConfig.model_validate({"services": [
        {"name": "llm", "service_id": "svc-llm", "instances": 3},
        {"name": "embed", "service_id": "svc-embed", "instances": 2},
    ]})
    with Emulator(config) as emu:
        yield emu


class AgentProcess:
    def __init__(self, config_path: Path, admin_port: int, log: Path) -> None:
        self.admin_port = admin_port
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(config_path)],
            stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, "MODELARTS_PASSWORD": DEFAULT_PASSWORD},
        )
        self.log_path = log

    def status(self) -> dict[str, Any]:
        return requests.get(f"http://127.0.0.1:{self.admin_port}/status", timeout=2).json()  # type: ignore[no-any-return]

    def ready(self) -> bool:
        try:
            return requests.get(f"http://127.0.0.1:{self.admin_port}/readyz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(15)
        self._log.close()
        return code


def write_config(path: Path, emu: Emulator, services: list[dict[str, Any]], out_dir: Path, envoy_admin: int,
                 agent_admin: int, interval: float = 1) -> Path:
    data = {
        "modelarts": {"iam_url": emu.iam_url, "modelarts_url": emu.modelarts_url, "project_id": DEFAULT_PROJECT_ID},
        "auth": {"mode": "password", "domain": DEFAULT_DOMAIN, "user": DEFAULT_USER},
        "discovery": {"allowed_cidrs": ["127.0.0.0/8"], "default_poll_interval_seconds": interval},
        "services": services,
        "envoy": {"output_dir": str(out_dir), "admin_port": envoy_admin},
        "admin": {"port": agent_admin},
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(data))
    os.replace(tmp, path)
    return path


@pytest.fixture
def setup(emulator: Emulator, tmp_path: Path, start_envoy: StartEnvoy):  # type: ignore[no-untyped-def]
    agents: list[AgentProcess] = []

    def start(services: list[dict[str, Any]]) -> tuple[AgentProcess, Any, Path]:
        config_path = tmp_path / "agent.yaml"
        envoy_admin, agent_admin = free_port(), free_port()
        write_config(config_path, emulator, services, tmp_path / "envoy", envoy_admin, agent_admin)
        agent = AgentProcess(config_path, agent_admin, tmp_path / "agent.log")
        agents.append(agent)
        assert wait_until(agent.ready, 30), agent.log_path.read_text()[-3000:]
        envoy = start_envoy(load_config(config_path))
        return agent, envoy, config_path

    yield start
    for agent in agents:
        agent.stop(signal.SIGKILL)


def ids(emu: Emulator, service_id: str) -> set[str]:
    return {i.instance_id for i in emu.admin.instances(service_id) if i.listed}


def test_scale_out_gets_traffic_within_poll_interval_plus_2s(emulator: Emulator, setup) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    agent, _envoy, _ = setup([{"name": "llm", "service_id": "svc-llm", "listen_port": port}])
    assert wait_until(lambda: set(send_requests(port, 30, 3).answered) == ids(emulator, "svc-llm"), 10)
    interval = agent.status()["services"][0]["effective_poll_interval_seconds"]
    emulator.admin.scale("svc-llm", 4)
    new = (ids(emulator, "svc-llm") - set(send_requests(port, 30, 3).answered)).pop()
    appeared = time.monotonic()
    assert wait_until(lambda: new in send_requests(port, 8, 4).answered, interval + 2, interval=0.1), \
        f"new instance got no traffic within {interval + 2:.1f}s"
    print(f"scale-out propagation: {time.monotonic() - appeared:.2f}s (poll interval {interval}s)")


def test_scale_in_lets_in_flight_requests_finish(emulator: Emulator, setup) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    setup([{"name": "llm", "service_id": "svc-llm", "listen_port": port}])
    assert wait_until(lambda: set(send_requests(port, 30, 3).answered) == ids(emulator, "svc-llm"), 10)
    results: dict[str, Any] = {}

    def slow_batch() -> None:
        results["slow"] = send_requests(port, 9, concurrency=9, headers={"X-Emulator-Delay-Ms": "2500"})

    thread = threading.Thread(target=slow_batch)
    thread.start()
    time.sleep(0.5)  # the slow requests are now in flight on every instance
    before = ids(emulator, "svc-llm")
    emulator.admin.scale("svc-llm", 2)
    removed = (before - ids(emulator, "svc-llm")).pop()
    thread.join(20)
    slow = results["slow"]
    assert slow.failures == [] and sum(slow.answered.values()) == 9
    assert slow.answered[removed] >= 1, "no in-flight request was on the removed instance"
    time.sleep(4)  # the next sync
    after = send_requests(port, 60, 4)
    assert after.failures == [] and removed not in after.answered


def test_config_file_hot_reload(emulator: Emulator, setup) -> None:  # type: ignore[no-untyped-def]
    llm_port, embed_port = free_port(), free_port()
    agent, envoy, config_path = setup([{"name": "llm", "service_id": "svc-llm", "listen_port": llm_port}])
    assert wait_until(lambda: set(send_requests(llm_port, 30, 3).answered) == ids(emulator, "svc-llm"), 10)
    data = yaml.safe_load(config_path.read_text())
    data["services"] = [
        {"name": "llm", "service_id": "svc-llm", "listen_port": llm_port, "lb": {"policy": "round_robin"}},
        {"name": "embed", "service_id": "svc-embed", "listen_port": embed_port},
    ]
    tmp = config_path.with_suffix(".new")
    tmp.write_text(yaml.safe_dump(data))
    os.replace(tmp, config_path)
    assert wait_until(lambda: set(send_requests(embed_port, 20, 2).answered) == ids(emulator, "svc-embed"), 15)
    clusters = str(envoy.admin_json("/config_dump?resource=dynamic_active_clusters"))
    assert "round_robin" in clusters
    # An invalid edit is refused and the running config stays.
    config_path.write_text("services: [{name: BAD}]\n")
    time.sleep(1.5)
    assert agent.proc.poll() is None
    assert set(send_requests(embed_port, 20, 2).answered) == ids(emulator, "svc-embed")
    assert "new config rejected" in agent.log_path.read_text()
    # Removing a service takes its listener away.
    data["services"] = data["services"][:1]
    config_path.write_text(yaml.safe_dump(data))
    assert wait_until(lambda: send_requests(embed_port, 1, 1).failures != [], 15)
    assert set(send_requests(llm_port, 30, 3).answered) == ids(emulator, "svc-llm")


def test_envoy_keeps_serving_after_agent_sigkill(emulator: Emulator, setup) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    agent, _envoy, _ = setup([{"name": "llm", "service_id": "svc-llm", "listen_port": port}])
    assert wait_until(lambda: set(send_requests(port, 30, 3).answered) == ids(emulator, "svc-llm"), 10)
    assert agent.stop(signal.SIGKILL) == -signal.SIGKILL
    result = send_requests(port, 200, 4)
    assert result.failures == [] and set(result.answered) == ids(emulator, "svc-llm")


def token_grants(emulator: Emulator) -> int:
    """IAM tokens the emulator issued (POST /v3/auth/tokens answered 201)."""
    return sum(1 for c in emulator.admin.calls(api="iam") if c.method == "POST" and c.status == 201)


def test_agent_logs_hold_no_secrets(emulator: Emulator, setup) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    agent, _, _ = setup([{"name": "llm", "service_id": "svc-llm", "listen_port": port}])
    # The agent must have authenticated once before the revocation, and again after it (counted by the
    # emulator): otherwise "no secret after re-authentication" would pass without any re-authentication.
    assert wait_until(lambda: token_grants(emulator) >= 1, 10), "the agent never obtained an IAM token"
    before = token_grants(emulator)
    revoked_at = max((c.seq for c in emulator.admin.calls()), default=0)
    emulator.admin.revoke_tokens()  # forces a 401 and a re-authentication
    assert wait_until(lambda: token_grants(emulator) > before, 15), "no re-authentication after the revocation"
    after = emulator.admin.calls(after=revoked_at, api="modelarts")
    assert any(c.status == 401 for c in after), "ModelArts never refused the revoked token"
    status_text = requests.get(f"http://127.0.0.1:{agent.admin_port}/status", timeout=2).text
    metrics_text = requests.get(f"http://127.0.0.1:{agent.admin_port}/metrics", timeout=2).text
    agent.stop()
    log = agent.log_path.read_text()
    assert "obtained IAM token" in log
    for text in (log, status_text, metrics_text):
        assert DEFAULT_PASSWORD not in text
