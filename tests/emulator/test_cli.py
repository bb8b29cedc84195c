"""The emulator as a subprocess: ready line and file, no secrets printed, clean exits, config errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from modelarts_emulator import cli
from modelarts_emulator.config import DEFAULT_PASSWORD, DEFAULT_SK

from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


def spawn(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "modelarts_emulator", *args], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_for(path, proc, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return json.loads(path.read_text())
        if proc.poll() is not None:
            raise AssertionError(f"emulator exited early: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError("emulator not ready in time")


def test_subprocess_ready_file_line_and_sigterm(tmp_path):
    ready = tmp_path / "ready.json"
    proc = spawn("--services", "2", "--instances", "1", "--ready-file", str(ready))
    try:
        info = wait_for(ready, proc)
        line = proc.stdout.readline()
        assert json.loads(line) == info
        assert {"iam_url", "modelarts_url", "admin_url", "services", "credentials_hint"} <= info.keys()
        assert [s["name"] for s in info["services"]] == ["demo-svc-1", "demo-svc-2"]
        assert DEFAULT_PASSWORD not in line and DEFAULT_SK not in line
        state = requests.get(info["admin_url"] + "/admin/state", timeout=5).json()
        assert DEFAULT_PASSWORD not in json.dumps(state) and DEFAULT_SK not in json.dumps(state)
        assert len(state["services"]) == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert not ready.exists()
        with pytest.raises(requests.ConnectionError):
            requests.get(info["admin_url"] + "/admin/state", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_shared_port_and_scenario_file(tmp_path):
    scenario = tmp_path / "s.yaml"
    scenario.write_text("services:\n  - name: from-file\n    instances: 1\n")
    ready = tmp_path / "ready.json"
    port = free_port()
    proc = spawn("--config", str(scenario), "--port", str(port), "--ready-file", str(ready))
    try:
        info = wait_for(ready, proc)
        assert [s["name"] for s in info["services"]] == ["from-file"]
        assert info["iam_url"] == info["modelarts_url"] == f"http://127.0.0.1:{port}"
        body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": "demo-user", "password": DEFAULT_PASSWORD, "domain": {"name": "demo-domain"}}}},
            "scope": {"project": {"name": "cn-north-4"}}}}
        resp = requests.post(info["iam_url"] + "/v3/auth/tokens", json=body, timeout=5)
        assert resp.status_code == 201
        svc = info["services"][0]
        url = f"{info['modelarts_url']}/v1/{svc['project_id']}/services/{svc['service_id']}"
        assert requests.get(url, headers={"X-Auth-Token": resp.headers["X-Subject-Token"]}, timeout=5).ok
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
        assert proc.stderr.read() == ""  # quiet when all is well
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    "content",
    ["limits:\n  per_user_per_minute: 0\n", "no_such_key: 1\n", "services: [\n", "- a list\n"],
)
def test_bad_config_exits_2_with_one_line(tmp_path, content):
    scenario = tmp_path / "bad.yaml"
    scenario.write_text(content)
    proc = spawn("--config", str(scenario))
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("modelarts-emulator:")
    assert out == ""


def test_port_in_use_exits_1_with_one_line():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        proc = spawn("--admin-port", str(busy.getsockname()[1]))
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 1
    assert "cannot listen" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_missing_config_file_exits_2():
    proc = spawn("--config", "/nonexistent/scenario.yaml")
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 2 and "cannot read" in err


def test_the_parser_builds_generated_services(tmp_path):
    args = cli.build_parser().parse_args(["--services", "3", "--instances", "0", "--port", "0"])
    assert args.log_format == "json"
    config = cli.build_config(args)
    assert [s.name for s in config.services] == ["demo-svc-1", "demo-svc-2", "demo-svc-3"]
    assert config.services[0].instances == 0
