"""Long-lived controller threads survive any exception: watchers, leader election and the per-Secret pollers.

Each test makes the thread's body raise something that is not the error it expects (a bug, a
malformed answer), checks that the thread goes on and that the error is logged once, with its
traceback, however often it repeats.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client as k8s

from agent.config import DiscoveryConfig, ServiceSpec
from agent.controller.credentials import parse_secret
from agent.controller.pipeline import GroupKey, PipelineSettings, _Group, group_config
from agent.kube.client import KubeClient
from agent.kube.leader import LeaderElector, LeaseConfig
from agent.kube.watch import Reflector
from agent.modelarts.budget import BudgetRegistry
from agent.snapshot import SnapshotStore
from agent.sources.modelarts import ModelArtsSource
from tests.unit.test_kube_controller import LeaseApi, secret


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def errors_with_traceback(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]


class BrokenWatchApi(KubeClient):
    """Lists fine; every watch raises the same unexpected error `failures` times, then blocks quietly."""

    def __init__(self, failures: int) -> None:
        super().__init__(k8s.ApiClient(k8s.Configuration()))
        self.failures = failures
        self.watches = 0
        self.lists = 0

    def list(self, path: str, label_selector: str | None = None,
             field_selector: str | None = None) -> tuple[list[dict[str, Any]], str]:
        self.lists += 1
        return [{"metadata": {"namespace": "ns", "name": "a", "resourceVersion": "1"}}], "1"

    def watch(self, path: str, resource_version: str, **_kwargs: Any) -> Iterator[dict[str, Any]]:
        self.watches += 1
        if self.watches <= self.failures:
            raise TypeError("'NoneType' object is not subscriptable")
        time.sleep(0.05)
        return iter(())


def test_a_watch_that_keeps_raising_is_retried_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    api, stop = BrokenWatchApi(failures=4), threading.Event()
    seen: list[int] = []
    reflector = Reflector(api, "/x", "things", lambda objs: seen.append(len(objs)), stop, max_backoff=0.02)
    with caplog.at_level(logging.DEBUG):
        reflector.start()
        try:
            assert wait_until(lambda: api.watches > 5)
            assert reflector.thread.is_alive()
        finally:
            stop.set()
            reflector.thread.join(5)
    logged = errors_with_traceback(caplog)
    assert len(logged) == 1, [r.getMessage() for r in logged]
    assert logged[0].exc_info is not None and logged[0].exc_info[0] is TypeError
    assert api.lists >= 2  # relisted after the failure: the local copy may have been half-updated
    assert seen and seen[-1] == 1


def test_a_failing_watch_handler_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    api, stop = BrokenWatchApi(failures=0), threading.Event()

    def handler(_objects: Any) -> None:
        raise KeyError("a bug in the handler")

    reflector = Reflector(api, "/x", "things", handler, stop)
    with caplog.at_level(logging.DEBUG):
        for _ in range(3):
            reflector._relist()
    assert len(errors_with_traceback(caplog)) == 1


class RaisingLeaseApi(LeaseApi):
    """The Lease GET raises an unexpected error (not a KubeApiError) a few times."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.gets = 0

    def get(self, path: str, timeout: float | None = None) -> dict[str, Any] | None:
        self.gets += 1
        if self.gets <= self.failures:
            raise ValueError("malformed Lease")
        return super().get(path, timeout)


def test_leader_election_survives_an_unexpected_error(caplog: pytest.LogCaptureFixture) -> None:
    api, stop = RaisingLeaseApi(failures=3), threading.Event()
    started: list[float] = []
    config = LeaseConfig("ns", "lease", "me", lease_duration=2.0, renew_deadline=1.2, retry_period=0.05)
    elector = LeaderElector(api, config, lambda: started.append(time.monotonic()), lambda: None, stop)
    with caplog.at_level(logging.DEBUG):
        elector.start()
        try:
            assert wait_until(elector.is_leader, 10), f"gets: {api.gets}"
            assert elector.thread.is_alive() and started
        finally:
            stop.set()
            elector.interrupt()
            elector.thread.join(5)
    logged = [r for r in errors_with_traceback(caplog) if r.exc_info and r.exc_info[0] is ValueError]
    assert len(logged) == 1


def test_a_per_secret_poller_that_raises_keeps_polling(monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    runs: list[float] = []

    def flaky_run(self: ModelArtsSource) -> None:
        runs.append(time.monotonic())
        if len(runs) <= 2:
            raise ValueError("could not convert string to float: 'soon'")
        self._stop.wait(10)

    monkeypatch.setattr(ModelArtsSource, "run", flaky_run)
    creds = parse_secret(secret(token="tok-value-123"))
    key = GroupKey("ns", "creds", "http://127.0.0.1:9", "http://127.0.0.1:9", "p", ("10.0.0.0/8",))
    specs = [ServiceSpec(name="ns--llm", service_id="sid", project_id="p")]
    config = group_config(key, creds, specs, PipelineSettings())
    store = SnapshotStore(config.services, DiscoveryConfig())
    group = _Group(key, creds, config, store, BudgetRegistry(20, 2000, 2.0), lambda: False)
    monkeypatch.setattr("agent.loops.backoff_seconds", lambda *_args: 0.01)
    with caplog.at_level(logging.DEBUG):
        group.poller.thread.start()
        try:
            assert wait_until(lambda: len(runs) == 3)
            assert group.poller.thread.is_alive()
        finally:
            group.close()
            group.poller.thread.join(5)
    assert len([r for r in errors_with_traceback(caplog) if "ModelArts poller" in r.getMessage()]) == 1
