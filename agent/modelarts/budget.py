"""The rate budget: every ModelArts call waits here first, and a call that would exceed it is never sent.

ModelArts allows 20 look-ups a minute per IAM user and 2,000 per tenant. A plain token bucket
would allow a full burst at start-up on top of a previous process's calls, so each limit is a
sliding-window log *and* the calls are paced `window / limit` apart. Pacing makes restarts and
leader hand-overs safe without shared state: a new process waits one pacing interval before its
first call, so the combined sequence stays paced and no window ever holds more than the limit.

Across processes on one host (a `run` next to an `endpoints`, or several agents of one IAM user),
the limits are shared through `host_state.SharedBudgetFile`: each decision merges what the other
processes recorded (calls, pacing, 429 pauses) under the host-wide lock, then records its own. So
the pause of a 429 also survives a restart: the next process reads it before its first call.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard, TypeVar

from agent.clock import SYSTEM_CLOCK, Clock
from agent.metrics import BUDGETS
from agent.modelarts.host_state import SharedBudgetFile, prune, state_key

log = logging.getLogger(__name__)

WINDOW_SECONDS = 60.0
# A pause read from the shared file is never believed beyond this (a corrupt or hostile value).
MAX_SHARED_PAUSE_SECONDS = 3600.0
T = TypeVar("T")


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

    def merge(self, entry: Mapping[str, Any], now: float) -> None:
        """Adopt what other processes recorded under the same key: their calls, pacing and pauses."""
        horizon = now + 1.0  # nobody made a call in the future: such a time is not believed
        calls = {float(t) for t in entry.get("calls") or () if _is_time(t) and now - self.window < t <= horizon}
        if calls - set(self._log):
            self._log = deque(sorted(set(self._log) | calls))
        last = entry.get("last")
        if _is_time(last) and last <= horizon:
            self._last = float(last) if self._last is None else max(self._last, float(last))
        paused = entry.get("paused_until")
        if _is_time(paused):
            self._paused_until = max(self._paused_until, min(float(paused), now + MAX_SHARED_PAUSE_SECONDS))

    def export(self) -> dict[str, Any]:
        return {"calls": list(self._log), "last": self._last, "paused_until": self._paused_until}


def _is_time(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


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
                 lock: threading.Lock, clock: Clock, shared: SharedBudgetFile | None = None,
                 keys: tuple[str, str] = ("", "")) -> None:
        self.identity = identity
        self._user = user
        self._tenant = tenant
        self._lock = lock
        self._clock = clock
        self._shared = shared
        self._user_key, self._tenant_key = keys
        self.waits_total = 0
        self.calls_total = 0

    def _locked(self, action: Callable[[float], T]) -> T:
        """Run `action(now)` on this budget, merged with and then written to the host-wide state.

        Called with `self._lock` held. `now` is read once the host lock is held, so a call is never
        recorded earlier than another process's that it had to wait for.
        """
        shared = self._shared
        if shared is None:
            return action(self._clock.monotonic())
        done: list[T] = []
        try:
            with shared.locked() as entries:
                now = self._clock.monotonic()
                self._user.merge(entries.get(self._user_key) or {}, now)
                self._tenant.merge(entries.get(self._tenant_key) or {}, now)
                done.append(action(now))
                entries[self._user_key] = self._user.export()
                entries[self._tenant_key] = self._tenant.export()
                prune(entries, now)
        except OSError as exc:
            # Discovery must not stop over a state file: carry on with this process's own view.
            log.warning("host-wide budget state unusable, keeping a per-process budget: %s", exc.strerror or exc,
                        extra={"identity": self.identity})
            self._shared = None
        return done[0] if done else action(self._clock.monotonic())

    @property
    def spacing(self) -> float:
        """The minimum time between two calls of this identity."""
        return max(self._user.spacing, self._tenant.spacing)

    def try_acquire(self) -> float:
        """Take a call slot now and return 0, or return how long to wait (nothing is taken)."""
        with self._lock:
            return self._locked(self._take)

    def _take(self, now: float) -> float:
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
            self._locked(lambda now: self._user.pause_until(now + seconds))

    def usage(self) -> BudgetUsage:
        with self._lock:
            return self._locked(self._usage)

    def _usage(self, now: float) -> BudgetUsage:
        return BudgetUsage(
            identity=self.identity,
            limit=self._user.limit,
            used_in_window=self._user.used(now),
            next_slot_seconds=max(self._user.wait_time(now), self._tenant.wait_time(now)),
            waits_total=self.waits_total,
            calls_total=self.calls_total,
        )


class BudgetRegistry:
    """One budget per identity, one shared limit per tenant, for the whole process (and, with
    `shared`, for every process of this user on the host)."""

    def __init__(self, per_user_per_minute: int = 20, per_tenant_per_minute: int = 2000,
                 safety_margin_seconds: float = 2.0, clock: Clock = SYSTEM_CLOCK, warm_start: bool = True,
                 window_seconds: float = WINDOW_SECONDS, shared: SharedBudgetFile | None = None) -> None:
        self._per_user = per_user_per_minute
        self._per_tenant = per_tenant_per_minute
        self._window = window_seconds + safety_margin_seconds
        self._clock = clock
        # Long-running agents start warm (restart safety); a one-shot CLI call need not wait.
        self._warm_start = warm_start
        self._shared = shared
        # One lock for all: a call must take its user and its tenant slot atomically.
        self._lock = threading.Lock()
        self._tenants: dict[str, SlidingWindowLimit] = {}
        self._budgets: dict[str, RateBudget] = {}
        BUDGETS.registries.add(self)

    def budget(self, identity: str, tenant: str, scope: str = "") -> RateBudget:
        """The budget of `identity`; `scope` (the ModelArts URL) names whose gateway counts, so the
        host-wide state of different endpoints (or test emulators) stays apart."""
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
            keys = (state_key(scope, "user", identity), state_key(scope, "tenant", tenant))
            budget = RateBudget(identity, user_limit, tenant_limit, self._lock, self._clock, self._shared, keys)
            self._budgets[identity] = budget
            return budget

    def budgets(self) -> list[RateBudget]:
        with self._lock:
            return list(self._budgets.values())
