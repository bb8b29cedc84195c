"""A running agent and its watched files: a log file in the watched folder, ConfigMap/Secret volume updates."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from modelarts_emulator import Emulator

from agent.app.run import AgentRuntime
from agent.config import load_config
from agent.sinks.factory import sinks_for
from tests.atomic_writer import AtomicWriter
from tests.integration.conftest import agent_config
from tests.integration.test_cli import CREDS, write_config


def test_debug_log_in_the_watched_folder_does_not_feed_on_itself(emulator: Emulator, tmp_path: Path) -> None:
    # An hour between polls: once started, the agent is idle and has next to nothing to say.
    config = write_config(tmp_path / "agent.yaml", emulator, admin={"port": 0},
                          discovery={"allowed_cidrs": ["127.0.0.0/8"], "default_poll_interval_seconds": 3600})
    log_file = tmp_path / "agent.log"
    with log_file.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "agent", "--log-level", "debug", "run", "--config",
                                 str(config)], stdout=sink, stderr=sink, env={**os.environ, **CREDS})
    try:
        deadline = time.monotonic() + 30
        while b"agent started" not in log_file.read_bytes() and time.monotonic() < deadline:
            assert proc.poll() is None, log_file.read_text()
            time.sleep(0.1)
        time.sleep(1.0)  # the first poll's lines
        start = log_file.stat().st_size
        time.sleep(4.0)
        grown = log_file.stat().st_size - start
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    # Before the fix each line's inotify event was logged at debug, which was a new event: ~4 MB/s.
    assert grown < 16 * 1024, f"the log grew {grown} bytes in 4 s of idle"


def test_a_running_agent_follows_two_kubelet_updates_of_config_and_keys(emulator: Emulator, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The config (a ConfigMap volume) and an API-keys file (a Secret volume), each updated twice."""
    for name, value in CREDS.items():
        monkeypatch.setenv(name, value)
    secret_vol, config_vol = AtomicWriter(tmp_path / "secret"), AtomicWriter(tmp_path / "config")
    keys_file = tmp_path / "secret" / "api-keys"

    def config_yaml(poll: int) -> str:
        base = agent_config(emulator, "password", admin={"port": 0},
                            discovery={"allowed_cidrs": ["127.0.0.0/8"], "default_poll_interval_seconds": poll},
                            envoy={"output_dir": str(tmp_path / "envoy")},
                            services=[{"name": "llm", "service_id": "svc-llm", "listen_port": 18080,
                                       "auth": {"api_key": {"keys_file": str(keys_file)}}}])
        return yaml.safe_dump(base.model_dump(mode="json"))

    secret_vol.write({"api-keys": "client-a:key-number-one-0001\n"})
    config_vol.write({"agent.yaml": config_yaml(30)})
    config_path = tmp_path / "config" / "agent.yaml"
    runtime = AgentRuntime(load_config(config_path), config_path, sink_factory=sinks_for)
    lds = tmp_path / "envoy" / "lds.json"
    runtime.start()
    try:
        assert wait_for(lambda: lds.exists() and "key-number-one-0001" in lds.read_text())
        for poll, key in ((40, "key-number-two-0002"), (50, "key-number-three-03")):
            secret_vol.write({"api-keys": f"client-a:{key}\n"})
            assert wait_for(functools.partial(file_holds, lds, key)), f"{key} never reached lds.json"
            config_vol.write({"agent.yaml": config_yaml(poll)})
            assert wait_for(functools.partial(polls_every, runtime, poll)), f"poll {poll} never applied"
    finally:
        runtime.stop()


def file_holds(path: Path, text: str) -> bool:
    return text in path.read_text()


def polls_every(runtime: AgentRuntime, seconds: float) -> bool:
    return runtime.config.discovery.default_poll_interval_seconds == seconds


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()
