"""An instance's concurrency slots on an ideal clock: service times as configured, whatever the loop's lag.

The emulator serves every instance from one asyncio loop, and a service time is a sleep. A busy loop
wakes a sleeper late, then wakes the next queued request late again, and every such lag was added to
the time the slot was held: an instance configured for 10 ms held its slot ~11 ms at a few hundred
requests/s on a shared core, so it had ~10 % less capacity than configured, and more variance (the
adaptive matrix's "90 % load" cell really ran at ~100 % of the instances' capacity, every policy's
queue growing through the run).

Here each slot keeps the time it *should* be free. A request starts at the later of the time it asked
for a slot and the time its slot is free on that clock, and is due at start + its drawn service time.
The loop's lag still delays each answer a little, as a network would, but it no longer accumulates in
the instance's queue: the instance serves at exactly the capacity its configuration says. Time a holder
keeps the slot after its service (a token stream's tokens) is real holding, and counts in full.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass


@dataclass
class Hold:
    """One request's use of a slot, on the ideal clock (loop time, seconds)."""

    start: float  # when its service starts
    due: float | None = None  # when its service ends (start + service time), once drawn
    woke: float = 0.0  # when it actually resumed after waiting for `due`


class SlotClock:
    """The ideal free times of `slots` slots (a FIFO queue in front of `slots` servers)."""

    def __init__(self, slots: int) -> None:
        self._free = [0.0] * slots  # a heap: the slot free earliest first

    def take(self, asked: float) -> Hold:
        """A request that asked at `asked` got a slot (the semaphore's order is FIFO): its service starts when
        the earliest free slot is free on the ideal clock, or at once if that is past."""
        return Hold(start=max(asked, heapq.heappop(self._free)))

    def give_back(self, hold: Hold, now: float) -> None:
        """The holder let go at `now`: the slot is free from `due` plus what it held after resuming (a
        stream's tokens); the lag of its wake-up is not held time. Without a service (an error path), now."""
        free = now if hold.due is None else hold.due + max(0.0, now - hold.woke)
        heapq.heappush(self._free, free)
