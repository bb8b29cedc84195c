"""Time as a dependency, so rate-budget and staleness logic can run in simulated time."""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def wall(self) -> float: ...

    def sleep(self, seconds: float, stop: threading.Event | None = None) -> bool:
        """Sleep; return True if `stop` was set (the caller should quit)."""
        ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def sleep(self, seconds: float, stop: threading.Event | None = None) -> bool:
        if stop is None:
            time.sleep(max(0.0, seconds))
            return False
        return stop.wait(max(0.0, seconds))


class ManualClock:
    """A clock that only moves when told to; `sleep` advances it (single-threaded simulations)."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self._now = start

    def monotonic(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += max(0.0, seconds)

    def sleep(self, seconds: float, stop: threading.Event | None = None) -> bool:
        self.advance(seconds)
        return stop is not None and stop.is_set()


SYSTEM_CLOCK = SystemClock()
