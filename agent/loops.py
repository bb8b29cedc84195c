"""Helpers for long-lived thread loops that must survive any exception.

A loop that dies quietly is worse than one that fails loudly: the agent keeps answering with
data that no longer moves. So every loop catches what its body raises, logs it with its
traceback once per distinct error (repeats are counted, at debug level, so a persistent fault
cannot flood the log), waits a bounded, growing delay and goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from agent.errors import AgentError


def backoff_seconds(failures: int, base: float, cap: float) -> float:
    """base, 2*base, 4*base ... never above cap (failures counts from 1)."""
    return min(cap, base * 2.0 ** min(max(failures - 1, 0), 16))


# Failures the code expects (an unreachable API, a full disk, a refused write): their message says it
# all, so they are logged without a traceback. Anything else is a bug and gets one.
EXPECTED: tuple[type[BaseException], ...] = (AgentError, OSError)


class FailureLog:
    """Logs a loop's exceptions: the first of each distinct error (a bug with its traceback), then only a count."""

    def __init__(self, logger: logging.Logger, what: str,
                 expected: tuple[type[BaseException], ...] = EXPECTED) -> None:
        self._log = logger
        self._what = what
        self._expected = expected
        self.last: str | None = None
        self.repeats = 0

    def failed(self, exc: BaseException, **extra: object) -> None:
        message = f"{type(exc).__name__}: {exc}"
        if message == self.last:
            self.repeats += 1
            self._log.debug("%s still failing (%d repeats): %s", self._what, self.repeats, message, extra=extra)
            return
        self.last, self.repeats = message, 0
        trace = None if isinstance(exc, self._expected) else exc
        self._log.error("%s failed; retrying: %s", self._what, message, exc_info=trace, extra=extra)

    def recovered(self) -> None:
        if self.last is not None:
            self._log.info("%s recovered", self._what, extra={"repeats": self.repeats})
        self.last, self.repeats = None, 0


def run_forever(body: Callable[[], None], stop: threading.Event, failures: FailureLog, *, base: float = 1.0,
                cap: float = 30.0, healthy_after: float = 60.0, monotonic: Callable[[], float] | None = None) -> None:
    """Call `body` until `stop` is set; it should return only once `stop` is set.

    An exception backs off (base, doubling, capped) and calls `body` again. A body that ran
    `healthy_after` seconds before failing starts the backoff over.
    """
    clock = monotonic or time.monotonic
    count = 0
    while not stop.is_set():
        started = clock()
        try:
            body()
            return
        except Exception as exc:
            count = 1 if clock() - started >= healthy_after else count + 1
            failures.failed(exc, failures=count)
            stop.wait(backoff_seconds(count, base, cap))
