"""Staleness is read from the clock, not set by the poller: with nobody polling, data still turns stale."""

from __future__ import annotations

from agent.clock import ManualClock
from agent.config import DiscoveryConfig, ServiceSpec
from agent.model import Endpoint
from agent.snapshot import SnapshotStore


def test_stale_without_any_poll() -> None:
    clock = ManualClock()
    store = SnapshotStore([ServiceSpec(name="svc", service_id="id")], DiscoveryConfig(stale_after_seconds=30),
                          clock)
    store.record_endpoints("svc", (Endpoint(ip="10.0.0.1", port=80, schema="http"),))
    assert store.status("svc").stale is False  # type: ignore[union-attr]
    clock.advance(31)  # the poller is dead: no record_*, no refresh_staleness
    assert store.status("svc").stale is True  # type: ignore[union-attr]
    assert [s.stale for s in store.statuses()] == [True]
