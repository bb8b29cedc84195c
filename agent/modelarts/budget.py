"""The rate budget: every ModelArts call waits here first, and a call that would exceed it is never sent.

ModelArts allows 20 look-ups a minute per IAM user and 2,000 per tenant. A plain token bucket
would allow a full burst at start-up on top of a previous process's calls, so each limit is a
sliding-window log *and* the calls are paced `window / limit` apart. Pacing makes restarts and
leader hand-overs safe without shared state: a new process waits one pacing interval before its
first call, so the combined sequence stays paced and no window ever holds more than the limit.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

from agent.clock import SYSTEM_CLOCK, Clock
from agent.metrics import BUDGETS

WINDOW_SECONDS = 60.0


class SlidingWindowLimit:
    """At most `limit` calls in any half-open window of `window` seconds, paced evenly."""

    def __init__(self, limit: int, window: float, now: float, warm_start: bool = True) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.window = window
        self.spacing = window / limit
        self._log: deque[float] = deque()
        # A start-up behaves as if a call had just been made (see the module docstring).
        self._last: float | None = now if warm_start else None
        self._paused_until = 0.0

    def _prune(self, now: float) -> None:
        while self._log and self._log[0] <= now - self.window:
            self._log.popleft()

    def wait_time(self, now: float) -> float:
        self._prune(now)
        waits = [self._paused_until - now]
        if len(self._log) >= self.limit:
            waits.append(self._log[0] + self.window - now)
        if self._last is not None:
            waits.append(self._last + self.spacing - now)
        return max(0.0, *waits)

    def record(self, now: float) -> None:
        self._log.append(now)
        self._last = now

    def pause_until(self, until: float) -> None:
        self._paused_until = max(self._paused_until, until)

    def used(self, now: float) -> int:
        self._prune(now)
        return len(self._log)


@dataclass(frozen=True)
class BudgetUsage:
    identity: str
    limit: int
    used_in_window: int
    next_slot_seconds: float
    waits_total: int
    calls_total: int


class RateBudget:
    """The budget of one credential identity: its user limit plus its tenant's shared limit."""

    def __init__(self, identity: str, user: SlidingWindowLimit, tenant: SlidingWindowLimit,
                 lock: threading.Lock, clock: Clock) -> None:
        self.identity = identity
        self._user = user
        self._tenant = tenant
        self._lock = lock
        self._clock = clock
        self.waits_total = 0
        self.calls_total = 0

    @property
    def spacing(self) -> float:
        """The minimum time between two calls of this identity."""
        return max(self._user.spacing, self._tenant.spacing)

    def try_acquire(self) -> float:
        """Take a call slot now and return 0, or return how long to wait (nothing is taken)."""
        with self._lock:
            now = self._clock.monotonic()
            wait = max(self._user.wait_time(now), self._tenant.wait_time(now))
            if wait > 0:
                return wait
            self._user.record(now)
            self._tenant.record(now)
            self.calls_total += 1
            return 0.0

    def acquire(self, stop: threading.Event | None = None) -> bool:
        """Block until a slot is free; False if `stop` was set first (no call may be made)."""
        waited = False
        while True:
            wait = self.try_acquire()
            if wait <= 0:
                if waited:
                    self.waits_total += 1
                return True
            waited = True
            if self._clock.sleep(wait, stop):
                return False

    def penalize(self, seconds: float) -> None:
        """After a 429 nobody using this identity may call for `seconds`."""
        with self._lock:
            self._user.pause_until(self._clock.monotonic() + seconds)

    def usage(self) -> BudgetUsage:
        with self._lock:
            now = self._clock.monotonic()
            return BudgetUsage(
                identity=self.identity,
                limit=self._user.limit,
                used_in_window=self._user.used(now),
                next_slot_seconds=max(self._user.wait_time(now), self._tenant.wait_time(now)),
                waits_total=self.waits_total,
                calls_total=self.calls_total,
            )


class BudgetRegistry:
    """One budget per identity, one shared limit per tenant, for the whole process."""

    def __init__(self, per_user_per_minute: int = 20, per_tenant_per_minute: int = 2000,
                 safety_margin_seconds: float = 2.0, clock: Clock = SYSTEM_CLOCK, warm_start: bool = True,
                 window_seconds: float = WINDOW_SECONDS) -> None:
        self._per_user = per_user_per_minute
        self._per_tenant = per_tenant_per_minute
        self._window = window_seconds + safety_margin_seconds
        self._clock = clock
        # Long-running agents start warm (restart safety); a one-shot CLI call need not wait.
        self._warm_start = warm_start
        # One lock for all: a call must take its user and its tenant slot atomically.
        self._lock = threading.Lock()
        self._tenants: dict[str, SlidingWindowLimit] = {}
        self._budgets: dict[str, RateBudget] = {}
        BUDGETS.registries.add(self)

    def budget(self, identity: str, tenant: str) -> RateBudget:
        with self._lock:
            existing = self._budgets.get(identity)
            if existing is not None:
                return existing
            now = self._clock.monotonic()
            tenant_limit = self._tenants.get(tenant)
            if tenant_limit is None:
                tenant_limit = SlidingWindowLimit(self._per_tenant, self._window, now, self._warm_start)
                self._tenants[tenant] = tenant_limit
            user_limit = SlidingWindowLimit(self._per_user, self._window, now, self._warm_start)
            budget = RateBudget(identity, user_limit, tenant_limit, self._lock, self._clock)
            self._budgets[identity] = budget
            return budget

    def budgets(self) -> list[RateBudget]:
        with self._lock:
            return list(self._budgets.values())
