"""Under CI=true nothing skips: a missing Envoy fails the test that needs it, with the reason."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.envoy import harness

TESTS = Path(__file__).resolve().parents[1]


def test_a_missing_envoy_skips_locally_and_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness, "envoy_binary", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        harness.require_envoy()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"envoy binary not available.*CI=true"):
        harness.require_envoy()


def test_an_installed_envoy_is_returned() -> None:
    binary = harness.require_envoy()
    assert Path(binary).exists()


def test_no_test_skips_for_a_missing_envoy_on_its_own() -> None:
    """Every test that needs Envoy goes through require_envoy (or the fixtures that call it)."""
    offenders = []
    for path in TESTS.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if re.search(r"envoy_binary\(\) is None", text) and path.name != "harness.py":
            offenders.append(str(path.relative_to(TESTS)))
        if re.search(r"importorskip\(\s*[\"']agent", text):
            offenders.append(f"{path.relative_to(TESTS)} (importorskip of the project's own module)")
    assert offenders == []
