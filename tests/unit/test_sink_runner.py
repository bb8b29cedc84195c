"""The sink runner: a republish racing an in-flight publication is not lost; a failing sink never ends the thread."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import pytest

from agent.config import DiscoveryConfig, ServiceSpec
from agent.model import Endpoint, Snapshot
from agent.sinks.runner import SinkRunner
from agent.snapshot import SnapshotStore


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def make_store() -> SnapshotStore:
    store = SnapshotStore([ServiceSpec(name="llm", service_id="sid")], DiscoveryConfig())
    store.record_endpoints("llm", (Endpoint("10.0.0.1", 80),))
    return store


class BlockingSink:
    """The first publication blocks until `release` is set; every publication is recorded."""

    name = "blocking"

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.published: list[int] = []
        self._lock = threading.Lock()

    def publish(self, snapshot: Snapshot) -> None:
        first = not self.entered.is_set()
        self.entered.set()
        if first:
            assert self.release.wait(5), "the test never released the sink"
        with self._lock:
            self.published.append(snapshot.version)


def test_republish_during_an_in_flight_publication_publishes_again() -> None:
    store, sink, stop = make_store(), BlockingSink(), threading.Event()
    runner = SinkRunner(sink, store, stop, retry_seconds=0.01)
    runner.start()
    try:
        assert sink.entered.wait(5)
        # A reload that changes only the policy part of the config (splits, gateway, a rotated key file):
        # the snapshot version does not move, so only the republish request can bring it to the sink.
        runner.republish()
        sink.release.set()
        assert wait_until(lambda: len(sink.published) >= 2), f"publications: {sink.published}"
        version = store.snapshot.version
        assert sink.published[:2] == [version, version]
        assert wait_until(lambda: not runner.pending())
        time.sleep(0.6)  # no further publication without a new request or a new version
        assert len(sink.published) == 2
    finally:
        stop.set()
        sink.release.set()
        runner.thread.join(5)


def test_each_republish_after_a_publication_is_served() -> None:
    store, sink, stop = make_store(), BlockingSink(), threading.Event()
    sink.entered.set()  # never block
    runner = SinkRunner(sink, store, stop, retry_seconds=0.01)
    runner.start()
    try:
        assert wait_until(lambda: len(sink.published) == 1)
        for expected in (2, 3):
            runner.republish()
            assert wait_until(lambda n=expected: len(sink.published) == n), f"publications: {sink.published}"
    finally:
        stop.set()
        runner.thread.join(5)


class FlakySink:
    """Fails with the same error `failures` times, then with another one, then works."""

    name = "flaky"

    def __init__(self, failures: int) -> None:
        self.calls = 0
        self.failures = failures
        self.published: list[int] = []

    def publish(self, snapshot: Snapshot) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise KeyError("a bug in the sink")
        if self.calls == self.failures + 1:
            raise ValueError("another bug")
        self.published.append(snapshot.version)


def test_a_failing_sink_is_retried_and_each_distinct_error_logged_once_with_its_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    store, sink, stop = make_store(), FlakySink(failures=3), threading.Event()
    runner = SinkRunner(sink, store, stop, retry_seconds=0.01, max_retry_seconds=0.02)
    with caplog.at_level(logging.DEBUG, logger="agent.sinks.runner"):
        runner.start()
        try:
            assert wait_until(lambda: sink.published == [store.snapshot.version]), f"calls: {sink.calls}"
            assert runner.thread.is_alive()
        finally:
            stop.set()
            runner.thread.join(5)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.exc_info[0] for r in errors if r.exc_info] == [KeyError, ValueError]
    assert len(errors) == 2
    assert runner.last_error is None


class BrokenStore(SnapshotStore):
    """A store whose wait raises once: an exception outside publish() must not end the thread either."""

    def __init__(self) -> None:
        super().__init__([ServiceSpec(name="llm", service_id="sid")], DiscoveryConfig())
        self.raised = False

    def wait_for_change(self, after_version: int, timeout: float, until: object = None) -> Snapshot:
        if not self.raised:
            self.raised = True
            raise RuntimeError("unexpected")
        return super().wait_for_change(after_version, timeout)


def test_an_exception_outside_publish_does_not_end_the_runner() -> None:
    store, sink, stop = BrokenStore(), BlockingSink(), threading.Event()
    sink.entered.set()
    runner = SinkRunner(sink, store, stop, retry_seconds=0.01)
    runner.published_version = store.snapshot.version  # as after a first publication: the runner waits
    runner.start()
    try:
        store.record_endpoints("llm", (Endpoint("10.0.0.1", 80),))
        assert wait_until(lambda: store.snapshot.version in sink.published), f"published: {sink.published}"
        assert store.raised and runner.thread.is_alive()
    finally:
        stop.set()
        runner.thread.join(5)


class DiskFullSink:
    """Fails like a full disk twice (an expected, operational failure), then works."""

    name = "disk"

    def __init__(self) -> None:
        self.calls = 0

    def publish(self, snapshot: Snapshot) -> None:
        self.calls += 1
        if self.calls <= 2:
            raise OSError(28, "No space left on device")


def test_an_expected_failure_is_logged_once_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    store, sink, stop = make_store(), DiskFullSink(), threading.Event()
    runner = SinkRunner(sink, store, stop, retry_seconds=0.01, max_retry_seconds=0.02)
    with caplog.at_level(logging.DEBUG, logger="agent.sinks.runner"):
        runner.start()
        try:
            assert wait_until(lambda: runner.published_version == store.snapshot.version)
        finally:
            stop.set()
            runner.thread.join(5)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None
    assert "No space left on device" in errors[0].getMessage()
