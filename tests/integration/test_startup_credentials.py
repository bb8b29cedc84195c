"""A credential source that cannot be read: a configuration error at start-up, a sync error at run time."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from modelarts_emulator import Emulator
from modelarts_emulator.config import DEFAULT_AK, DEFAULT_PASSWORD, DEFAULT_SK

from agent.app.run import AgentRuntime
from agent.config import parse_config
from tests.integration.conftest import agent_config


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELARTS_")}
    return {**env, **extra}


def write(path: Path, emu: Emulator, mode: str, auth: dict[str, Any]) -> Path:
    config = agent_config(emu, mode, auth=auth, admin={"port": 0},
                          envoy={"output_dir": str(path.parent / "envoy")})
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)))
    return path


@pytest.mark.parametrize(("mode", "auth", "env", "named"), [
    ("password", {}, {}, "MODELARTS_PASSWORD"),
    ("password", {"password_file": "/nonexistent/password"}, {}, "/nonexistent/password"),
    ("password", {"password_file": "DIR"}, {}, "IAM password"),  # a directory: unreadable
    ("password", {"password_file": "EMPTY"}, {}, "is empty"),
    ("aksk", {}, {"MODELARTS_AK": DEFAULT_AK}, "MODELARTS_SK"),
    ("token", {}, {}, "MODELARTS_TOKEN"),
], ids=["password-env", "password-file-missing", "password-file-dir", "password-file-empty", "sk-env", "token"])
def test_run_without_a_credential_exits_2_naming_the_source(
        emulator: Emulator, tmp_path: Path, mode: str, auth: dict[str, Any], env: dict[str, str], named: str) -> None:
    if auth.get("password_file") == "DIR":
        auth = {"password_file": str(tmp_path)}
    elif auth.get("password_file") == "EMPTY":
        (tmp_path / "empty").write_text("\n")
        auth = {"password_file": str(tmp_path / "empty")}
    config = write(tmp_path / "agent.yaml", emulator, mode, auth)
    try:
        result = subprocess.run([sys.executable, "-m", "agent", "run", "--config", str(config)],
                                capture_output=True, text=True, timeout=30, env=clean_env(**env))
    except subprocess.TimeoutExpired:
        pytest.fail("run kept going without its credentials instead of exiting 2")
    assert result.returncode == 2, result.stderr
    assert named in result.stderr and "cannot start" in result.stderr
    assert "Traceback" not in result.stderr
    for secret in (DEFAULT_PASSWORD, DEFAULT_SK):
        assert secret not in result.stdout + result.stderr
    assert not [c for c in emulator.admin.calls() if c.api == "modelarts"], "it called ModelArts anyway"


def test_a_password_gone_at_run_time_is_a_sync_error(emulator: Emulator, tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text(DEFAULT_PASSWORD)
    base = agent_config(emulator, "password", auth={"password_file": str(secret)},
                        services=[{"name": "rotated", "service_id": "svc-llm"}])
    config = parse_config({**base.model_dump(mode="json"), "admin": {"port": 0},
                           "budget": {"per_user_per_minute": 600, "safety_margin_seconds": 0}})
    runtime = AgentRuntime(config)
    runtime.start()
    try:
        deadline = time.monotonic() + 15
        while not runtime.store.ready():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        secret.unlink()  # a rotation gone wrong
        emulator.admin.revoke_tokens()  # the next call must re-authenticate, and cannot
        deadline = time.monotonic() + 15
        while (runtime.store.status("rotated").last_error_kind != "auth"):  # type: ignore[union-attr]
            assert time.monotonic() < deadline, runtime.store.status("rotated")
            time.sleep(0.05)
        status = runtime.store.status("rotated")
        assert status is not None and str(secret) in (status.last_error or "")
        assert runtime.poller_alive() and len(runtime.store.snapshot.services["rotated"].endpoints) == 3
        # Re-authentication really was attempted: ModelArts refused the revoked token first.
        assert 401 in [c.status for c in emulator.admin.calls() if c.api == "modelarts"]
    finally:
        runtime.stop()
