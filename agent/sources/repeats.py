"""Warnings that would repeat on every poll are logged when they change, with a count of the repeats.

A hostile or broken answer tends to come back identical poll after poll; logging it each time
buries everything else (and fills disks). The gate lets a message through when it differs from
the last one under its key, counts the identical ones in between, and lets a reminder through
every `remind_seconds`, so a long outage still shows in the log.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

from agent.clock import SYSTEM_CLOCK, Clock

REMIND_SECONDS = 600.0
MAX_KEYS = 4096


@dataclass
class _Last:
    signature: Hashable
    logged_at: float
    repeats: int = 0


class RepeatGate:
    def __init__(self, clock: Clock = SYSTEM_CLOCK, remind_seconds: float = REMIND_SECONDS,
                 max_keys: int = MAX_KEYS) -> None:
        self._clock = clock
        self._remind = remind_seconds
        self._max_keys = max_keys
        self._last: OrderedDict[str, _Last] = OrderedDict()

    def check(self, key: str, signature: Hashable) -> int | None:
        """None: the same as last time (suppressed and counted). Otherwise log it, noting the returned
        number of suppressed repeats of the previous message (0: none)."""
        now = self._clock.monotonic()
        last = self._last.get(key)
        if last is not None and last.signature == signature and now - last.logged_at < self._remind:
            last.repeats += 1
            return None
        repeats = last.repeats if last is not None else 0
        self._last[key] = _Last(signature, now)
        self._last.move_to_end(key)
        while len(self._last) > self._max_keys:
            self._last.popitem(last=False)
        return repeats

    def forget(self, key: str) -> int | None:
        """The condition under `key` is over: the repeats of its last message, or None if there was none."""
        last = self._last.pop(key, None)
        return last.repeats if last is not None else None
