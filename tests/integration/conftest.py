"""Fixtures: an in-process emulator and agent configs pointing at it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from modelarts_emulator import Emulator, EmulatorConfig
from modelarts_emulator.config import (
    DEFAULT_AK,
    DEFAULT_DOMAIN,
    DEFAULT_PASSWORD,
    DEFAULT_PROJECT_ID,
    DEFAULT_SK,
    DEFAULT_USER,
)

from agent.config import AgentConfig, parse_config

SECRETS = (DEFAULT_PASSWORD, DEFAULT_SK)


def emulator_config(instances: int = 3, **overrides: Any) -> EmulatorConfig:
    data: dict[str, Any] = {"services": [{"name": "llm", "service_id": "svc-llm", "instances": instances}]}
    data.update(overrides)
    return EmulatorConfig.model_validate(data)


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(emulator_config()) as emu:
        yield emu


@pytest.fixture
def creds_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELARTS_PASSWORD", DEFAULT_PASSWORD)
    monkeypatch.setenv("MODELARTS_AK", DEFAULT_AK)
    monkeypatch.setenv("MODELARTS_SK", DEFAULT_SK)


def agent_config(emu: Emulator, mode: str = "password", **overrides: Any) -> AgentConfig:
    data: dict[str, Any] = {
        "modelarts": {"iam_url": emu.iam_url, "modelarts_url": emu.modelarts_url, "project_id": DEFAULT_PROJECT_ID,
                      "timeout_seconds": 2},
        "auth": {"mode": mode, "domain": DEFAULT_DOMAIN, "user": DEFAULT_USER},
        "discovery": {"allowed_cidrs": ["127.0.0.0/8"], "default_poll_interval_seconds": 1,
                      "empty_confirmations": 2, "stale_after_seconds": 3},
        "services": [{"name": "llm", "service_id": "svc-llm"}],
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return parse_config(data)
