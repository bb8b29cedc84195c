"""The poller against hostile answers: an unparseable Retry-After, unforeseen exceptions, a dead thread.

A poller must never die of an answer; and if its thread dies anyway, /readyz, /status and the
metrics must say so, with staleness computed from the clock rather than by the poller itself.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from modelarts_emulator import Emulator
from prometheus_client.parser import text_string_to_metric_families

from agent.app.run import AgentRuntime
from agent.config import parse_config
from agent.modelarts.budget import BudgetRegistry
from agent.modelarts.client import build_client
from agent.modelarts.responses import RETRY_AFTER_MAX_SECONDS
from agent.snapshot import SnapshotStore
from agent.sources.modelarts import ModelArtsSource
from tests.integration.conftest import agent_config

pytestmark = pytest.mark.usefixtures("creds_env")


def make_source(emu: Emulator, **overrides: Any) -> tuple[ModelArtsSource, SnapshotStore, Any]:
    config = agent_config(emu, "password", **overrides)
    client = build_client(config, BudgetRegistry(600, 2000, 0.0, warm_start=False))
    store = SnapshotStore(config.services, config.discovery)
    return ModelArtsSource(config, store, client), store, config.services[0]


@pytest.mark.parametrize(("value", "low", "high"), [
    ("soon", 2.5, 5.0),  # unusable: the backoff (base 5 s, equal jitter) instead
    ("1.5", 2.5, 5.0),
    ("", 2.5, 5.0),
    ("-5", 2.5, 5.0),
    ("99999999999999999999", RETRY_AFTER_MAX_SECONDS - 1, RETRY_AFTER_MAX_SECONDS),  # clamped
    ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0, 0.0),  # a date in the past: no extra wait
    ("in 4 s", 1.0, 4.5),  # replaced by an HTTP-date 4 s ahead, made when the test runs
    ("Wed, 32 Foo 2015 99:99:99 GMT", 2.5, 5.0),
])
def test_any_retry_after_pauses_and_never_raises(emulator: Emulator, value: str, low: float, high: float) -> None:
    if value == "in 4 s":
        value = email.utils.formatdate(time.time() + 4, usegmt=True)
    source, store, spec = make_source(emulator)
    source.poll(spec)
    emulator.admin.inject_fault("custom", service_id="svc-llm", count=1, status=429, body="error",
                                error_code="APIGW.0308", headers={"Retry-After": value})
    source.poll(spec)  # raised ValueError out of the poller for "soon", "1.5" and bad dates
    status = store.status("llm")
    assert status is not None and status.rate_limited and status.last_error_kind == "throttled"
    assert len(store.snapshot.services["llm"].endpoints) == 3
    pause = source._client.budget.usage().next_slot_seconds
    assert low - 0.2 <= pause <= high + 0.1, pause


@pytest.fixture
def runtime(emulator: Emulator) -> Iterator[AgentRuntime]:
    base = agent_config(emulator, "password", services=[{"name": "survivor", "service_id": "svc-llm"}])
    config = parse_config({**base.model_dump(mode="json"), "admin": {"port": 0},
                           "budget": {"per_user_per_minute": 600, "safety_margin_seconds": 0}})
    rt = AgentRuntime(config)
    rt.start()
    wait_for(rt.store.ready, 15)
    yield rt
    rt.stop()


def wait_for(check: Any, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def metric(url: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(requests.get(url + "/metrics", timeout=2).text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def test_an_unforeseen_exception_is_a_sync_error_not_a_dead_poller(
        runtime: AgentRuntime, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    real = runtime.client.get_endpoints
    calls = {"n": 0}

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] <= 3:
            raise RuntimeError("boom from a bug")
        return real(*args, **kwargs)

    with caplog.at_level(logging.INFO):
        monkeypatch.setattr(runtime.client, "get_endpoints", flaky)
        wait_for(lambda: (runtime.store.status("survivor") or None) is not None
                 and runtime.store.status("survivor").last_error_kind == "internal", 10)  # type: ignore[union-attr]
        wait_for(lambda: calls["n"] >= 4 and runtime.store.status("survivor").last_error is None, 30)  # type: ignore[union-attr]
    assert runtime.poller_alive()
    tracebacks = [r for r in caplog.records if r.exc_info and "boom from a bug" in str(r.exc_info[1])]
    assert len(tracebacks) == 1, "the traceback is logged once, not once per poll"
    requests.get(runtime.admin.url + "/readyz", timeout=2).raise_for_status()


class PollerKilled(BaseException):
    """Escapes every `except Exception`: the thread dies, as with a bug in the loop itself."""


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_poller_shows_in_readyz_status_and_metrics(runtime: AgentRuntime,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    url = runtime.admin.url
    assert requests.get(url + "/readyz", timeout=2).status_code == 200
    assert metric(url, "modelarts_agent_poller_alive", poller="modelarts") == 1

    def die(*_args: Any, **_kwargs: Any) -> Any:
        raise PollerKilled()

    monkeypatch.setattr(runtime.source, "step", die)
    wait_for(lambda: not runtime.poller_alive(), 10)
    readyz = requests.get(url + "/readyz", timeout=2)
    assert readyz.status_code == 503 and "poller has died" in readyz.text
    status = requests.get(url + "/status", timeout=2).json()
    assert status["poller"]["alive"] is False and status["ready"] is False
    assert metric(url, "modelarts_agent_poller_alive", poller="modelarts") == 0
    # Nobody polls any more, yet the data turns stale on time (stale_after_seconds: 3).
    time.sleep(3.3)
    status = requests.get(url + "/status", timeout=2).json()
    assert [s["stale"] for s in status["services"] if s["name"] == "survivor"] == [True]
    assert metric(url, "modelarts_agent_service_stale", service="survivor") == 1


def test_repeated_warnings_are_logged_once_per_change(emulator: Emulator,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    source, store, spec = make_source(emulator, discovery={"allowed_cidrs": ["127.0.0.10/32"]})
    emulator.admin.inject_fault("hostile_ips", service_id="svc-llm")
    with caplog.at_level(logging.WARNING, logger="agent.sources.modelarts"):
        for _ in range(4):
            source.poll(spec)
    dropped = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(dropped) == 1, [r.getMessage() for r in caplog.records]  # was 16 lines on every poll
    assert "loopback" in dropped[0].getMessage()
    caplog.clear()
    emulator.admin.clear_faults()
    emulator.admin.inject_fault("5xx", service_id="svc-llm", status=503)
    with caplog.at_level(logging.INFO, logger="agent.sources.modelarts"):
        for _ in range(4):
            source.poll(spec)
        emulator.admin.clear_faults()
        source.poll(spec)
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "discovery failed" in m]) == 1, messages
    assert any("recovered" in m and "repeated 3 more times" in m for m in messages), messages
    assert store.status("llm").consecutive_failures == 0  # type: ignore[union-attr]
