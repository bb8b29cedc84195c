"""The controller re-reads credentials Secrets on their own schedule, however often CR events wake
its reconcile loop. Regression test: the re-read ran only when a wait timed out, and every status
write makes a CR event, so with a few ModelArtsServices a rotated password was never picked up
(found by the real-cluster test of a Secret updated in place)."""

from __future__ import annotations

import threading
import time
from typing import Any

from agent.controller.pipeline import Pipeline


class Secrets:
    def __init__(self) -> None:
        self.refreshes = 0

    def refresh(self, refs: Any) -> set[Any]:
        list(refs)
        self.refreshes += 1
        return set()


class Settings:
    secret_refresh_seconds = 0.2
    resync_seconds = 1000.0


class Failures:
    def failed(self, exc: BaseException) -> None:
        raise AssertionError(f"the loop failed: {exc!r}")

    def recovered(self) -> None:
        pass


class BusyPipeline(Pipeline):
    """Just what `_reconcile_loop` uses; `reconcile` counts, and the CRs wake it constantly."""

    def __init__(self) -> None:  # no kube, no threads: only the loop under test
        self._settings = Settings()  # type: ignore[assignment]
        self.stop = threading.Event()
        self._dirty = threading.Event()
        self._lock = threading.Lock()
        self._crs = {"ns/llm": {"metadata": {"namespace": "ns"}, "spec": {"credentialsSecretRef": {"name": "s"}}}}
        self.secrets = Secrets()  # type: ignore[assignment]
        self._reconcile_failures = Failures()  # type: ignore[assignment]
        self.reconciles = 0

    def reconcile(self) -> None:
        self.reconciles += 1


def test_secrets_are_reread_while_cr_events_keep_waking_the_loop() -> None:
    pipeline = BusyPipeline()
    loop = threading.Thread(target=pipeline._reconcile_loop, daemon=True)
    loop.start()
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:  # a CR event every 20 ms, ten times faster than the refresh
        pipeline._dirty.set()
        time.sleep(0.02)
    pipeline.stop.set()
    pipeline._dirty.set()
    loop.join(5)
    assert pipeline.reconciles > 10
    assert pipeline.secrets.refreshes >= 4, pipeline.secrets.refreshes  # ~7 in 1.5 s at 0.2 s
