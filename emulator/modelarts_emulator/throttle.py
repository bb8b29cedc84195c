"""The gateway's accounting: the emulator clock, the sliding-window limits, and the call log.

The clock is wall time plus an admin-set skew. Everything time-based in the emulator (token
expiry, the X-Sdk-Date check, the rate windows, the call log) reads this one clock, so a test can
jump time forward instead of sleeping through a 60 s window.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from modelarts_emulator.config import LimitsConfig


class EmulatorClock:
    def __init__(self, skew_seconds: float = 0.0) -> None:
        self.skew_seconds = skew_seconds

    def now(self) -> float:
        return time.time() + self.skew_seconds


class SlidingWindow:
    """At most `limit` events per key in any `window` seconds; only admitted events count."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._events: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        events = self._events.setdefault(key, deque())
        while events and events[0] <= now - self.window:
            events.popleft()
        return events

    def allows(self, key: str, now: float) -> bool:
        return len(self._recent(key, now)) < self.limit

    def record(self, key: str, now: float) -> None:
        self._recent(key, now).append(now)

    def retry_after(self, key: str, now: float) -> float:
        """Seconds until one more event fits (0 if it fits now)."""
        events = self._recent(key, now)
        if len(events) < self.limit:
            return 0.0
        return max(0.0, events[len(events) - self.limit] + self.window - now)

    def count(self, key: str, now: float) -> int:
        return len(self._recent(key, now))

    def clear(self) -> None:
        self._events.clear()


@dataclass(frozen=True)
class Throttled:
    policy: str  # "user" or "domain", as in the gateway's message
    limit: int
    retry_after: float
    window: float = 60.0

    @property
    def message(self) -> str:
        return (
            f"The throttling threshold has been reached: policy {self.policy} over ratelimit, "
            f"limit:{self.limit}, time:{_window_text(self.window)}"
        )

    @property
    def retry_after_header(self) -> str:
        return str(max(1, math.ceil(self.retry_after)))


def _window_text(window: float) -> str:
    if window == 60.0:
        return "1 minute"
    return f"{window:g} second" + ("" if window == 1 else "s")


class RateLimiter:
    """The two gateway policies. A call is admitted only if both allow it, and only then counted."""

    def __init__(self, limits: LimitsConfig) -> None:
        self.configure(limits)

    def configure(self, limits: LimitsConfig) -> None:
        self.limits = limits
        self.per_user = SlidingWindow(limits.per_user_per_minute, limits.window_seconds)
        self.per_tenant = SlidingWindow(limits.per_tenant_per_minute, limits.window_seconds)

    def admit(self, user_id: str, domain_id: str, now: float) -> Throttled | None:
        window = self.limits.window_seconds
        if not self.per_user.allows(user_id, now):
            return Throttled("user", self.per_user.limit, self.per_user.retry_after(user_id, now), window)
        if not self.per_tenant.allows(domain_id, now):
            return Throttled("domain", self.per_tenant.limit, self.per_tenant.retry_after(domain_id, now), window)
        self.per_user.record(user_id, now)
        self.per_tenant.record(domain_id, now)
        return None


class CallRecord(BaseModel):
    """One API call as the emulator saw it; the admin call log is a list of these."""

    seq: int
    time: float  # emulator clock, when the call arrived
    api: Literal["iam", "modelarts"]
    method: str
    path: str
    query: str = ""
    user: str | None = None  # IAM user name (the AK owner for AK/SK calls)
    domain: str | None = None
    auth: Literal["token", "aksk", "password", "none"] = "none"
    status: int  # 0: no complete response (reset, hang-up, or the client left first)
    error_code: str | None = None
    service_id: str | None = None
    fault: str | None = None
    counted: bool = False  # counted against the rate limits


class CallLog:
    """Bounded, in-order log of calls; `seq` is monotonic so readers can page with `after`."""

    def __init__(self, max_records: int = 100_000) -> None:
        self._records: deque[CallRecord] = deque(maxlen=max_records)
        self._seq = 0

    def add(self, **fields: Any) -> CallRecord:
        self._seq += 1
        record = CallRecord(seq=self._seq, **fields)
        self._records.append(record)
        return record

    def query(self, since: float | None = None, after: int | None = None) -> list[CallRecord]:
        return [
            r for r in self._records
            if (since is None or r.time >= since) and (after is None or r.seq > after)
        ]

    def clear(self) -> None:
        self._records.clear()
