"""`modelarts-agent render bootstrap`, and a real Envoy started from its output before the agent writes."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest
import yaml

from agent.cli import main, render_cmd
from agent.errors import ConfigError
from agent.sinks.envoy.files import EnvoyFileSink
from tests.envoy.conftest import Instances
from tests.envoy.harness import (
    EnvoyProcess,
    endpoint,
    envoy_binary,
    free_port,
    make_config,
    make_snapshot,
    require_envoy,
    send_requests,
)

CONFIG = """
modelarts: {{iam_url: "http://127.0.0.1:9", modelarts_url: "http://127.0.0.1:9", project_id: p}}
auth: {{mode: token}}
services:
  - {{name: svc, service_id: s1, listen_port: {port}}}
envoy: {{output_dir: {out}, admin_port: {admin}, admin_address: "{admin_address}"}}
"""


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    render_cmd.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    result: int = args.handler(args)
    return result


def write_config(tmp_path: Path, out: str = "run/envoy", admin: int = 9901, port: int = 8000,
                 admin_address: str = "127.0.0.1") -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(CONFIG.format(out=out, admin=admin, port=port, admin_address=admin_address))
    return path


def test_prints_bootstrap_with_absolute_paths_and_prepares_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert run(["render", "bootstrap", "--config", str(write_config(tmp_path))]) == 0
    data = yaml.safe_load(capsys.readouterr().out)
    out = tmp_path / "run" / "envoy"
    assert data["dynamic_resources"]["cds_config"]["path_config_source"]["path"] == str(out / "cds.json")
    assert data["dynamic_resources"]["lds_config"]["path_config_source"]["watched_directory"]["path"] == str(out)
    assert data["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    # Envoy will not start without these, so rendering creates them (empty) when missing.
    assert (out / "cds.json").exists() and (out / "lds.json").exists() and (out / "eds").is_dir()


def test_output_file_and_non_loopback_admin_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "bootstrap.yaml"
    config = write_config(tmp_path, out=str(tmp_path / "out"))
    assert run(["render", "bootstrap", "-c", str(config), "--output", str(target)]) == 0
    assert capsys.readouterr().out == ""
    assert yaml.safe_load(target.read_text())["node"]["id"] == "modelarts-agent"
    exposed = write_config(tmp_path, out=str(tmp_path / "out"), admin_address="0.0.0.0")
    with pytest.raises(ConfigError, match="loopback"):
        run(["render", "bootstrap", "-c", str(exposed)])


def test_main_registers_render(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, out=str(tmp_path / "out"), admin_address="10.1.2.3")
    assert main.main(["render", "bootstrap", "-c", str(config)]) == 2
    assert "not a loopback address" in capsys.readouterr().err


@pytest.mark.envoy
def test_envoy_started_first_then_fed_by_the_sink(tmp_path: Path, instances: Instances) -> None:
    require_envoy()
    admin, port = free_port(), free_port()
    out = tmp_path / "out"
    config_path = write_config(tmp_path, out=str(out), admin=admin, port=port)
    bootstrap = tmp_path / "bootstrap.yaml"
    assert run(["render", "bootstrap", "-c", str(config_path), "-o", str(bootstrap)]) == 0
    validate = subprocess.run([str(envoy_binary()), "--mode", "validate", "-c", str(bootstrap)],
                              capture_output=True, text=True, timeout=30)
    assert validate.returncode == 0, validate.stdout + validate.stderr
    envoy = EnvoyProcess(bootstrap, admin, tmp_path)
    try:
        envoy.start()  # nothing published yet: the prepared empty files are enough to start
        assert envoy.listeners() == set()
        config = make_config(out, admin, [{"name": "svc", "listen_port": port}])
        up = instances.http("i0")
        EnvoyFileSink(config).publish(make_snapshot(config, {"svc": [endpoint(up)]}))
        envoy.wait_for_listeners(["svc"])
        envoy.wait_for_hosts({"svc": [up.address]})
        assert send_requests(port, 10, concurrency=2).answered == {"i0": 10}
    finally:
        envoy.stop()
