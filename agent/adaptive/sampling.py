"""Turns successive admin reads (cumulative counters per Envoy) into per-host samples (deltas).

Deltas are taken per Envoy and then summed, so with several Envoys (gateway replicas) one that misses a
read or restarts (counters back to 0) costs one sample, never a negative or doubled count.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agent.adaptive.envoy_admin import ClusterHosts, HostCounters


@dataclass(frozen=True)
class HostSample:
    """What happened at one host since the previous read, summed over the Envoys that answered."""

    sent: int = 0  # requests sent to it
    succeeded: int = 0
    failed: int = 0
    active: int = 0  # in flight now
    # From the timing access logger, when Envoy has it: 2xx answers with a body since the previous read,
    # and the sum of their times to first body byte (seconds). Exact per-request evidence.
    timed: int = 0
    timed_seconds: float = 0.0
    timing: bool = False  # this Envoy has the timing counters for the host (then `timed` is evidence)

    def __add__(self, other: HostSample) -> HostSample:
        return HostSample(self.sent + other.sent, self.succeeded + other.succeeded, self.failed + other.failed,
                          self.active + other.active, self.timed + other.timed,
                          self.timed_seconds + other.timed_seconds, self.timing or other.timing)


# cluster -> host address -> sample
Samples = dict[str, dict[str, HostSample]]


def _delta(now: HostCounters, before: HostCounters | None) -> HostSample:
    if before is None or now.rq_total < before.rq_total or now.rq_success < before.rq_success \
            or now.rq_error < before.rq_error:
        # First sight of this host, or its counters went back (Envoy restarted, host re-added): no rates yet.
        return HostSample(active=now.rq_active)
    timed, timed_seconds, timing = 0, 0.0, False
    if now.timed is not None and now.timed_us is not None and before.timed is not None \
            and before.timed_us is not None and now.timed >= before.timed and now.timed_us >= before.timed_us:
        timed, timed_seconds, timing = now.timed - before.timed, (now.timed_us - before.timed_us) / 1e6, True
    return HostSample(sent=now.rq_total - before.rq_total, succeeded=now.rq_success - before.rq_success,
                      failed=now.rq_error - before.rq_error, active=now.rq_active, timed=timed,
                      timed_seconds=timed_seconds, timing=timing)


class DeltaTracker:
    def __init__(self) -> None:
        self._last: dict[str, ClusterHosts] = {}

    def update(self, answers: Mapping[str, ClusterHosts]) -> Samples:
        """Samples since the previous update, from the Envoys (URL -> counters) that answered this time."""
        samples: Samples = {}
        for url, clusters in answers.items():
            before = self._last.get(url, {})
            for cluster, hosts in clusters.items():
                previous = before.get(cluster, {})
                into = samples.setdefault(cluster, {})
                for address, counters in hosts.items():
                    sample = _delta(counters, previous.get(address))
                    into[address] = into[address] + sample if address in into else sample
            self._last[url] = clusters
        return samples
