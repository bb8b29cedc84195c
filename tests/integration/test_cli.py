"""The CLI as a user runs it: one-shot look-ups, clear config errors, no secrets in any output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from modelarts_emulator import Emulator
from modelarts_emulator.config import (
    DEFAULT_AK,
    DEFAULT_DOMAIN,
    DEFAULT_PASSWORD,
    DEFAULT_PROJECT_ID,
    DEFAULT_SK,
    DEFAULT_USER,
)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=60,
                          env=full_env)


def write_config(path: Path, emu: Emulator, mode: str = "password", **extra: object) -> Path:
    data = {
        "modelarts": {"iam_url": emu.iam_url, "modelarts_url": emu.modelarts_url, "project_id": DEFAULT_PROJECT_ID},
        "auth": {"mode": mode, "domain": DEFAULT_DOMAIN, "user": DEFAULT_USER},
        "discovery": {"allowed_cidrs": ["127.0.0.0/8"]},
        "services": [{"name": "llm", "service_id": "svc-llm"}],
        **extra,
    }
    path.write_text(yaml.safe_dump(data))
    return path


CREDS = {"MODELARTS_PASSWORD": DEFAULT_PASSWORD, "MODELARTS_AK": DEFAULT_AK, "MODELARTS_SK": DEFAULT_SK}


@pytest.mark.parametrize("mode", ["password", "aksk"])
def test_endpoints_json_and_no_secrets_in_output(emulator: Emulator, tmp_path: Path, mode: str) -> None:
    config = write_config(tmp_path / "agent.yaml", emulator, mode)
    result = run_cli("--log-level", "debug", "endpoints", "--config", str(config), "--json", env=CREDS)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    expected = sorted(f"{i.ip}:{i.port}" for i in emulator.admin.instances("svc-llm"))
    assert sorted(f"{e['ip']}:{e['port']}" for e in data[0]["endpoints"]) == expected
    for secret in (DEFAULT_PASSWORD, DEFAULT_SK):
        assert secret not in result.stdout + result.stderr


def test_endpoints_table(emulator: Emulator, tmp_path: Path) -> None:
    config = write_config(tmp_path / "agent.yaml", emulator)
    result = run_cli("endpoints", "--config", str(config), env=CREDS)
    assert result.returncode == 0, result.stderr
    for instance in emulator.admin.instances("svc-llm"):
        assert f"{instance.ip}:{instance.port}" in result.stdout


def test_bad_password_is_one_clear_line(emulator: Emulator, tmp_path: Path) -> None:
    config = write_config(tmp_path / "agent.yaml", emulator)
    result = run_cli("endpoints", "--config", str(config), env={**CREDS, "MODELARTS_PASSWORD": "hunter2-wrong"})
    assert result.returncode == 2
    assert "IAM refused the credentials" in result.stderr
    assert "Traceback" not in result.stderr and "hunter2-wrong" not in result.stdout + result.stderr


@pytest.mark.parametrize(("content", "message"), [
    ("modelarts: [1, 2", "invalid YAML"),
    ("- just\n- a list\n", "top level must be a mapping"),
    ("modelarts: {iam_url: x, modelarts_url: http://a, project_id: p}\nauth: {mode: token}\n",
     "modelarts.iam_url: must be an http(s) URL"),
    ("modelarts: {iam_url: http://a, modelarts_url: http://a, project_id: p}\nauth: {mode: token}\n"
     "discovery: {allowed_cidrs: [10.0.0.0/33]}\n", "discovery.allowed_cidrs"),
    ("modelarts: {iam_url: http://a, modelarts_url: http://a, project_id: p}\nauth: {mode: password}\n",
     "password auth needs auth.domain and auth.user"),
    ("modelarts: {iam_url: http://a, modelarts_url: http://a, project_id: p}\nauth: {mode: token}\n"
     "services: [{name: Bad_Name, service_id: x}]\n", "services.0.name"),
    ("modelarts: {iam_url: http://a, modelarts_url: http://a, project_id: p}\nauth: {mode: token}\n"
     "services: [{name: a, service_id: x, listen_port: 9000}, {name: b, service_id: y, listen_port: 9000}]\n",
     "both listen on"),
    ("modelarts: {iam_url: http://a, modelarts_url: http://a, project_id: p}\nauth: {mode: token, bogus: 1}\n",
     "auth.bogus: Extra inputs are not permitted"),
])
def test_bad_config_prints_field_and_reason(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    result = run_cli("endpoints", "--config", str(path))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_config_file(tmp_path: Path) -> None:
    result = run_cli("run", "--config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2 and "cannot read config" in result.stderr and "Traceback" not in result.stderr


def test_env_override_is_applied(tmp_path: Path, emulator: Emulator) -> None:
    config = write_config(tmp_path / "agent.yaml", emulator, discovery={"allowed_cidrs": ["10.0.0.0/8"]})
    result = run_cli("endpoints", "--config", str(config), "--json",
                     env={**CREDS, "MODELARTS_AGENT__DISCOVERY__ALLOWED_CIDRS": "[127.0.0.0/8]"})
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)[0]["endpoints"]) == 3


def test_version() -> None:
    result = run_cli("version")
    assert result.returncode == 0 and result.stdout.startswith("modelarts-agent ")


@pytest.mark.parametrize(("snippet", "message"), [
    ("envoy: {admin_address: 0.0.0.0}", "not a loopback address"),
    ("services: [{name: a, service_id: x, listen_address: localhost-ish}]", "is not an IP address"),
])
def test_envoy_safety_checks(tmp_path: Path, snippet: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("modelarts: {iam_url: http://a, modelarts_url: http://a, project_id: p}\nauth: {mode: token}\n"
                    + snippet + "\n")
    result = run_cli("endpoints", "--config", str(path))
    assert result.returncode == 2 and message in result.stderr, result.stderr


@pytest.mark.parametrize("port", ["70000", "-5", "http"])
@pytest.mark.parametrize("command", ["run", "sidecar", "controller"])
def test_admin_port_flag_out_of_range_is_a_usage_error(tmp_path: Path, command: str, port: str) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("modelarts: {iam_url: http://a, modelarts_url: http://a, project_id: p}\nauth: {mode: token}\n")
    result = run_cli(command, *(["--config", str(path)] if command != "controller" else []), "--admin-port", port)
    assert result.returncode == 2, result.stderr
    assert "--admin-port" in result.stderr and "is not a port number" in result.stderr
    assert "Traceback" not in result.stderr


def test_admin_port_override_is_validated() -> None:
    from agent.cli.options import with_admin_port
    from agent.config import parse_config
    from agent.errors import ConfigError

    config = parse_config({"modelarts": {"iam_url": "http://a", "modelarts_url": "http://a", "project_id": "p"},
                           "auth": {"mode": "token"}})
    assert with_admin_port(config, 0).admin.port == 0
    with pytest.raises(ConfigError, match="--admin-port"):
        with_admin_port(config, 70000)  # model_copy alone took it


def test_admin_port_in_use_is_one_clear_line(emulator: Emulator, tmp_path: Path) -> None:
    import socket

    config = write_config(tmp_path / "agent.yaml", emulator)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("run", "--config", str(config), "--admin-port", str(port), env=CREDS)
    assert result.returncode == 2, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr


def test_output_dir_that_cannot_be_created_is_one_clear_line(emulator: Emulator, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    config = write_config(tmp_path / "agent.yaml", emulator, admin={"port": 0},
                          envoy={"output_dir": str(tmp_path / "a-file" / "envoy")})
    result = run_cli("run", "--config", str(config), env=CREDS)
    assert result.returncode == 2, result.stderr
    assert "envoy.output_dir" in result.stderr and "Traceback" not in result.stderr


ENV_SECRET = "hunter2-in-env"


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("MODELARTS_AGENT__DISCOVERY__ALLOWED_CIDRS", f"[10.0.0.0/8, *{ENV_SECRET}", "is not valid YAML"),
    ("MODELARTS_AGENT__DISCOVERY__ALLOWED_CIDRS", f"{{a: [{ENV_SECRET}", "is not valid YAML"),
    ("MODELARTS_AGENT__ENVOY__ADMIN_ADDRESS", ENV_SECRET, "envoy.admin_address: invalid value"),
    ("MODELARTS_AGENT__MODELARTS__IAM_URL", ENV_SECRET, "must be an http(s) URL"),
])
@pytest.mark.parametrize("command", ["endpoints", "run"])
def test_bad_env_override_names_the_variable_never_the_value(emulator: Emulator, tmp_path: Path, command: str,
                                                             variable: str, value: str, message: str) -> None:
    config = write_config(tmp_path / "agent.yaml", emulator, admin={"port": 0})
    result = run_cli(command, "--config", str(config), env={**CREDS, variable: value})
    assert result.returncode == 2, result.stderr
    assert variable in result.stderr and message in result.stderr, result.stderr
    assert ENV_SECRET not in result.stdout + result.stderr and "Traceback" not in result.stderr
