"""File watchers against real filesystem events: the kubelet's `..data` swap, stops, failing callbacks."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config import AgentConfig
from agent.file_watch import ConfigWatcher, FileWatcher
from agent.modelarts.credentials import SecretSource
from tests.atomic_writer import AtomicWriter

CONFIG = {"modelarts": {"iam_url": "http://127.0.0.1:1", "modelarts_url": "http://127.0.0.1:1", "project_id": "p"},
          "auth": {"mode": "token"}}


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def has_length(items: list[Any], length: int) -> bool:
    return len(items) == length


def config_text(poll: int) -> str:
    return yaml.safe_dump({**CONFIG, "discovery": {"default_poll_interval_seconds": poll}})


def test_atomic_writer_builds_the_kubelet_layout(tmp_path: Path) -> None:
    writer = AtomicWriter(tmp_path / "vol")
    first = writer.write({"a": "1"})
    second = writer.write({"a": "2"})
    vol = tmp_path / "vol"
    assert (vol / "a").readlink() == Path("..data/a")
    assert (vol / "..data").readlink() == Path(second.name)
    assert not first.exists() and not (vol / "..data_tmp").exists()
    assert second.name.startswith("..") and (vol / "a").read_text() == "2"


def test_file_watcher_sees_two_kubelet_updates(tmp_path: Path) -> None:
    vol = tmp_path / "secret"
    writer = AtomicWriter(vol)
    writer.write({"api-keys": "key-one-0123456789\n"})
    seen: list[str] = []
    watcher = FileWatcher(lambda paths: seen.extend(p.read_text() for p in paths), debounce_seconds=0.05)
    watcher.watch([vol / "api-keys"])
    try:
        for number, key in enumerate(("key-two-0123456789\n", "key-three-012345678\n"), 1):
            writer.write({"api-keys": key})
            assert wait_until(functools.partial(has_length, seen, number)), f"update {number} was not seen: {seen}"
            assert seen[-1] == key
    finally:
        watcher.stop()


def test_config_watcher_reloads_on_two_kubelet_updates(tmp_path: Path) -> None:
    vol = tmp_path / "config"
    writer = AtomicWriter(vol)
    writer.write({"agent.yaml": config_text(10)})
    applied: list[AgentConfig] = []
    watcher = ConfigWatcher(vol / "agent.yaml", applied.append, debounce_seconds=0.05)
    watcher.start()
    try:
        for number, poll in enumerate((20, 30), 1):
            writer.write({"agent.yaml": config_text(poll)})
            assert wait_until(functools.partial(has_length, applied, number)), f"update {number} was not applied"
            assert applied[-1].discovery.default_poll_interval_seconds == poll
    finally:
        watcher.stop()


def test_secret_file_is_reread_after_two_kubelet_updates(tmp_path: Path) -> None:
    vol = tmp_path / "creds"
    writer = AtomicWriter(vol)
    writer.write({"password": "first-password"})
    source = SecretSource("IAM password", vol / "password", None)
    assert source.get() == "first-password"
    for password in ("second-password", "third-password"):
        writer.write({"password": password})
        assert source.get() == password


def test_events_for_other_files_in_the_folder_cost_nothing(tmp_path: Path) -> None:
    watched = tmp_path / "keys"
    watched.write_text("a")
    checks: list[float] = []
    watcher = FileWatcher(lambda _paths: None, debounce_seconds=0.01)
    real_check = watcher.check

    def counting_check() -> list[Path]:
        checks.append(time.monotonic())
        return real_check()

    watcher.check = counting_check  # type: ignore[method-assign]
    watcher.watch([watched])
    try:
        for i in range(200):
            (tmp_path / "agent.log").write_text(str(i))
        time.sleep(0.5)
        assert checks == []
        watched.write_text("b")
        assert wait_until(lambda: len(checks) >= 1)
    finally:
        watcher.stop()


def test_a_failing_callback_is_logged_once_and_retried(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    watched = tmp_path / "keys"
    watched.write_text("a")
    calls: list[str] = []

    def flaky(paths: list[Path]) -> None:
        calls.append(paths[0].read_text())
        if len(calls) < 3:
            raise RuntimeError("render failed")

    watcher = FileWatcher(flaky, debounce_seconds=0.02)
    watcher.watch([watched])
    try:
        with caplog.at_level(logging.INFO, logger="agent.file_watch"):
            watched.write_text("b")
            assert wait_until(lambda: len(calls) >= 3), calls
            time.sleep(0.3)
        assert calls == ["b", "b", "b"]  # retried until handled, then not again
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and errors[0].exc_info is not None
        # The watcher still works after the failures.
        watched.write_text("c")
        assert wait_until(lambda: calls[-1] == "c")
    finally:
        watcher.stop()


def test_many_stops_with_events_flowing_log_no_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    watched = tmp_path / "keys"
    watched.write_text("0")
    done = threading.Event()

    def churn() -> None:
        i = 0
        while not done.is_set() and i < 1_000_000:
            (tmp_path / ("keys" if i % 2 else "noise")).write_text(str(i))
            i += 1
            time.sleep(0.0005)

    writer = threading.Thread(target=churn, daemon=True)
    writer.start()
    late: list[float] = []
    try:
        with caplog.at_level(logging.WARNING):
            for _ in range(200):
                stopped = [False]

                def on_change(_paths: list[Path], stopped: list[bool] = stopped) -> None:
                    if stopped[0]:
                        late.append(time.monotonic())

                watcher = FileWatcher(on_change, debounce_seconds=0.001)
                watcher.watch([watched])
                time.sleep(0.01)
                watcher.stop()
                stopped[0] = True
    finally:
        done.set()
        writer.join(5)
    errors = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
    assert late == [], "a callback ran after stop() returned"


def test_an_exception_in_the_event_handler_does_not_end_the_watching(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    watched = tmp_path / "keys"
    watched.write_text("a")
    seen: list[str] = []
    watcher = FileWatcher(lambda paths: seen.append(paths[0].read_text()), debounce_seconds=0.02)
    real_matters = watcher._matters
    broken = [True]

    def matters(raw: str | bytes) -> bool:
        if broken[0]:
            raise RuntimeError("unexpected")
        return real_matters(raw)

    watcher._matters = matters  # type: ignore[method-assign]
    watcher.watch([watched])
    try:
        with caplog.at_level(logging.ERROR, logger="agent.file_watch"):
            for i in range(5):
                (tmp_path / "other").write_text(str(i))
            assert wait_until(lambda: len(caplog.records) >= 1)
            time.sleep(0.2)
        assert len(caplog.records) == 1 and caplog.records[0].exc_info is not None  # logged once
        broken[0] = False
        watched.write_text("b")
        assert wait_until(lambda: seen == ["b"]), seen
    finally:
        watcher.stop()
