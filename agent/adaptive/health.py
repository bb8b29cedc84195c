"""Is the feedback loop still steering? One state for `/status`, a metric and an alert (issue 17).

- `stale`: no good read of Envoy's admin for `STALE_SECONDS` (Envoy down, admin unreachable), after the
  start-up grace. Envoy keeps the last weights, which nobody updates any more.
- `blind`: a service has had traffic for `BLIND_SECONDS` and the loop still has no measured latency for
  it: every host sits at the assumed prior, so a slow host cannot be told from the others.
- `latched`: the estimates are far below what Envoy's own counters say. Mean in flight over the fast
  horizon divided by its answers (Little's law, uncapped) is more than `LATCH_FACTOR` x the estimates'
  mean latency for `LATCH_SECONDS`, or a prior is not a positive number. This is the fault of issue 17
  (every host ~2 ms while the real latencies were 10-60 ms, until a restart); it cannot happen with the
  current estimator, and the check is there so that any new way to it is seen.
- `ok` otherwise; `starting` before the first good read (within the grace period).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from agent.adaptive.estimator import EndpointEstimator, Estimate

STALE_SECONDS = 10.0
BLIND_SECONDS = 15.0
LATCH_FACTOR = 4.0
LATCH_SECONDS = 30.0
STATES = ("starting", "ok", "stale", "blind", "latched")
# The worst state of the services is the loop's state.
SEVERITY = {state: i for i, state in enumerate(STATES)}


@dataclass
class ServiceHealth:
    """What the loop tracks per service between reads to tell blind and latched from merely new."""

    traffic_since: float | None = None  # start of the current spell of traffic
    latched_since: float | None = None
    state: str = "ok"
    reason: str = ""

    def update(self, now: float, busy: bool, prior: float | None, raw: float | None, estimated: float | None) -> None:
        if not busy:
            self.traffic_since = None
        elif self.traffic_since is None:
            self.traffic_since = now
        far_below = raw is not None and estimated is not None and raw > LATCH_FACTOR * estimated
        if far_below:
            self.latched_since = now if self.latched_since is None else self.latched_since
        else:
            self.latched_since = None
        if prior is not None and not (math.isfinite(prior) and prior > 0):
            self.state, self.reason = "latched", f"the service's prior latency is {prior!r}"
        elif self.latched_since is not None and now - self.latched_since >= LATCH_SECONDS:
            self.state = "latched"
            self.reason = (f"estimates ({_ms(estimated)}) far below Envoy's counters ({_ms(raw)}) "
                           f"for {now - self.latched_since:.0f} s")
        elif prior is None and self.traffic_since is not None and now - self.traffic_since >= BLIND_SECONDS:
            self.state = "blind"
            self.reason = f"traffic for {now - self.traffic_since:.0f} s and no measured latency yet"
        else:
            self.state, self.reason = "ok", ""


def raw_latency(estimators: Iterable[EndpointEstimator]) -> float | None:
    """Little's law over the fast horizon, summed over the hosts, with no cap and no prior."""
    busy = succeeded = 0.0
    for e in estimators:
        busy += e.fast_busy
        succeeded += e.fast_succeeded
    return busy / succeeded if succeeded >= 20 else None


def estimated_latency(estimates: Mapping[str, Estimate]) -> float | None:
    """The estimates' mean latency, weighted by what each host answered."""
    total = sum(e.throughput for e in estimates.values())
    if total <= 0:
        return None
    return sum(e.latency * e.throughput for e in estimates.values()) / total


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.1f} ms"
