"""The real agent process (`modelarts-agent run` with `xds.enabled`) against the emulator, and two Envoys.

The control plane is SIGKILLed while both Envoys carry load; an instance is added while it is down;
the agent restarts. The Envoys must serve throughout on their last config, reconnect (one over
state-of-the-world, one over delta), and pick up the change made during the outage.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml
from modelarts_emulator import Emulator, EmulatorConfig
from modelarts_emulator.config import DEFAULT_DOMAIN, DEFAULT_PASSWORD, DEFAULT_PROJECT_ID, DEFAULT_USER

from tests.envoy.harness import EnvoyProcess, free_port, send_requests, wait_until
from tests.xds.conftest import StartAdsEnvoy
from tests.xds.helpers import LoadLoop

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

A, B = "127.0.1.1", "127.0.1.2"


class Agent:
    def __init__(self, config_path: Path, admin_port: int, log_path: Path) -> None:
        self.admin_port = admin_port
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(config_path)],
            stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, "MODELARTS_PASSWORD": DEFAULT_PASSWORD})

    def ready(self) -> bool:
        try:
            return requests.get(f"http://127.0.0.1:{self.admin_port}/readyz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(EmulatorConfig.model_validate({"services": [
            {"name": "llm", "service_id": "svc-llm", "instances": 2}]})) as emu:
        yield emu


@pytest.fixture
def agents() -> Iterator[list[Agent]]:
    started: list[Agent] = []
    yield started
    for agent in started:
        agent.kill()


def write_config(path: Path, emu: Emulator, listen_port: int, xds_port: int, admin_port: int) -> Path:
    path.write_text(yaml.safe_dump({
        "modelarts": {"iam_url": emu.iam_url, "modelarts_url": emu.modelarts_url, "project_id": DEFAULT_PROJECT_ID},
        "auth": {"mode": "password", "domain": DEFAULT_DOMAIN, "user": DEFAULT_USER},
        "discovery": {"allowed_cidrs": ["127.0.0.0/8"], "default_poll_interval_seconds": 1},
        "services": [{"name": "llm", "service_id": "svc-llm", "listen_port": listen_port}],
        "envoy": {"output_dir": str(path.parent / "envoy-files")},
        "admin": {"port": admin_port},
        "xds": {"enabled": True, "port": xds_port},
    }))
    return path


def listed(emu: Emulator) -> set[str]:
    return {i.instance_id for i in emu.admin.instances("svc-llm") if i.listed}


def answered(port: int, host: str) -> set[str]:
    return set(send_requests(port, 12, concurrency=3, host=host).answered)


def test_envoys_serve_through_control_plane_sigkill_and_resync_after_restart(
        tmp_path: Path, emulator: Emulator, agents: list[Agent], start_ads_envoy: StartAdsEnvoy) -> None:
    listen_port, xds_port, admin_port = free_port(), free_port(), free_port()
    config_path = write_config(tmp_path / "agent.yaml", emulator, listen_port, xds_port, admin_port)
    agents.append(Agent(config_path, admin_port, tmp_path / "agent.log"))
    assert wait_until(agents[-1].ready, 60), \
        f"agent exit code {agents[-1].proc.poll()}; log: {(tmp_path / 'agent.log').read_text()[-3000:]}"
    address = f"127.0.0.1:{xds_port}"
    envoys: dict[str, EnvoyProcess] = {A: start_ads_envoy(address, listen_address=A),
                                       B: start_ads_envoy(address, listen_address=B, delta=True)}
    before = listed(emulator)
    for host in envoys:
        assert wait_until(lambda h=host: answered(listen_port, h) == before, 15), host  # type: ignore[misc]

    with LoadLoop(listen_port, A) as load_a, LoadLoop(listen_port, B) as load_b:
        agents[-1].kill()
        for envoy in envoys.values():
            assert wait_until(lambda e=envoy: e.stats("control_plane.connected_state").get(  # type: ignore[misc]
                "control_plane.connected_state") == 0, 5)
        emulator.admin.scale("svc-llm", 3)  # a change while the control plane is down
        added = (listed(emulator) - before).pop()
        time.sleep(1.0)
        agents.append(Agent(config_path, admin_port, tmp_path / "agent.log"))
        restarted = time.monotonic()
        for host in envoys:
            assert wait_until(lambda h=host: added in answered(listen_port, h), 25, interval=0.2), \
                f"{host} never routed to {added}:\n{(tmp_path / 'agent.log').read_text()[-3000:]}"
        print(f"change made during the outage served {time.monotonic() - restarted:.1f}s after the restart")
    for load in (load_a, load_b):
        assert load.result.attempts > 50 and load.result.failures == [], load.result.failures[:5]
    for envoy in envoys.values():
        assert envoy.stats("control_plane.connected_state")["control_plane.connected_state"] == 1
        assert not any(envoy.rejected_updates().values())
