"""A bounded, paced HTTP load generator that records which instance served each request.

Open-loop pacing (requests are scheduled at fixed times, not after the previous one returns)
so a slow instance shows up as latency rather than as a lower request rate.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import aiohttp


@dataclass
class LoadStats:
    started: float = field(default_factory=time.monotonic)
    ok: int = 0
    failed: int = 0
    per_instance: Counter[str] = field(default_factory=Counter)
    # per-second buckets: second -> instance -> count (for the live table and the plot)
    timeline: dict[int, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    failures: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)

    def record(self, instance: str | None, latency_ms: float, error: str | None) -> None:
        second = int(time.monotonic() - self.started)
        if error is None and instance:
            self.ok += 1
            self.per_instance[instance] += 1
            self.timeline[second][instance] += 1
            self.latencies_ms.append(latency_ms)
        else:
            self.failed += 1
            self.failures[error or "no instance id"] += 1
            self.timeline[second]["(failed)"] += 1

    def recent(self, seconds: int = 2) -> Counter[str]:
        now = int(time.monotonic() - self.started)
        total: Counter[str] = Counter()
        for second in range(now - seconds, now):
            total.update(self.timeline.get(second, Counter()))
        return total


async def run_load(url: str, rate: float, duration: float, stats: LoadStats, stop: asyncio.Event | None = None,
                   headers: dict[str, str] | None = None, timeout: float = 10.0, max_in_flight: int = 256) -> None:
    """Send GETs to `url` at `rate` per second for `duration` seconds (or until `stop`)."""
    interval = 1.0 / rate
    limit = asyncio.Semaphore(max_in_flight)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    connector = aiohttp.TCPConnector(limit=max_in_flight)
    async with aiohttp.ClientSession(timeout=client_timeout, connector=connector) as session:
        tasks: set[asyncio.Task[None]] = set()

        async def one() -> None:
            began = time.monotonic()
            try:
                async with session.get(url, headers=headers) as resp:
                    await resp.read()
                    instance = resp.headers.get("X-Instance-Id")
                    error = None if resp.status == 200 else f"HTTP {resp.status}"
            except (TimeoutError, aiohttp.ClientError) as exc:
                instance, error = None, type(exc).__name__
            finally:
                limit.release()
            stats.record(instance, (time.monotonic() - began) * 1000, error)

        start = time.monotonic()
        sent = 0
        while True:
            now = time.monotonic()
            if now - start >= duration or (stop is not None and stop.is_set()):
                break
            due = start + sent * interval
            if due > now:
                await asyncio.sleep(due - now)
            await limit.acquire()
            task = asyncio.create_task(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        if tasks:
            await asyncio.wait(tasks, timeout=timeout + 1)
