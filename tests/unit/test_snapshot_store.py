"""Last-known-good: failures and suspicious answers never replace good endpoints."""

from __future__ import annotations

from agent.clock import ManualClock
from agent.config import DiscoveryConfig, ServiceSpec
from agent.errors import DiscoveryError, ThrottledError
from agent.model import Endpoint
from agent.snapshot import SnapshotStore

EPS = (Endpoint("10.0.0.1", 80), Endpoint("10.0.0.2", 80))


def make_store(confirmations: int = 3, stale_after: float = 60) -> tuple[SnapshotStore, ManualClock]:
    clock = ManualClock()
    spec = ServiceSpec(name="llm", service_id="sid")
    store = SnapshotStore([spec], DiscoveryConfig(empty_confirmations=confirmations, stale_after_seconds=stale_after),
                          clock)
    store.record_endpoints("llm", EPS)
    return store, clock


def endpoints(store: SnapshotStore) -> tuple[Endpoint, ...]:
    return store.snapshot.services["llm"].endpoints


def test_failures_keep_last_known_good_and_go_stale() -> None:
    store, clock = make_store(stale_after=60)
    version = store.snapshot.version
    for kind in ("server_error", "timeout", "malformed", "connection"):
        store.record_failure("llm", DiscoveryError("boom", kind=kind))
    store.record_failure("llm", ThrottledError("slow down"))
    assert endpoints(store) == EPS
    assert store.snapshot.version == version
    status = store.status("llm")
    assert status is not None and status.rate_limited and not status.stale and status.consecutive_failures == 5
    clock.advance(61)
    store.refresh_staleness()
    status = store.status("llm")
    assert status is not None and status.stale
    assert endpoints(store) == EPS
    store.record_endpoints("llm", EPS[:1])
    status = store.status("llm")
    assert status is not None and not status.stale and status.consecutive_failures == 0
    assert endpoints(store) == EPS[:1]


def test_empty_while_running_needs_confirmations() -> None:
    store, _ = make_store(confirmations=3)
    assert store.record_empty("llm", "running") is False
    assert store.record_empty("llm", "running") is False
    assert endpoints(store) == EPS
    assert store.record_empty("llm", "running") is True
    assert endpoints(store) == ()


def test_non_empty_answer_resets_the_confirmation_count() -> None:
    store, _ = make_store(confirmations=2)
    assert store.record_empty("llm", "running") is False
    store.record_endpoints("llm", EPS)
    assert store.record_empty("llm", "running") is False
    assert endpoints(store) == EPS


def test_stopped_drains_at_once() -> None:
    store, _ = make_store(confirmations=5)
    assert store.record_empty("llm", "stopped") is True
    assert endpoints(store) == ()


def test_versions_only_move_on_change_and_snapshots_are_immutable() -> None:
    store, _ = make_store()
    first = store.snapshot
    store.record_endpoints("llm", EPS)
    assert store.snapshot is first
    store.record_endpoints("llm", EPS[:1])
    assert store.snapshot.version == first.version + 1
    assert first.services["llm"].endpoints == EPS


def test_config_reload_keeps_endpoints_of_surviving_services() -> None:
    store, _ = make_store()
    store.set_specs([ServiceSpec(name="llm", service_id="sid", listen_port=10000),
                     ServiceSpec(name="new", service_id="other")])
    assert endpoints(store) == EPS
    assert store.snapshot.services["llm"].service_id == "sid"
    assert store.snapshot.services["new"].endpoints == ()
    store.set_specs([ServiceSpec(name="llm", service_id="changed")])
    assert endpoints(store) == ()


def test_a_drain_says_why_and_a_store_with_nothing_to_route_to_is_not_ready() -> None:
    store, _ = make_store(confirmations=2)
    assert store.ready() and store.without_endpoints() == []
    store.record_empty("llm", "running")
    store.record_empty("llm", "running")
    status = store.status("llm")
    assert status is not None and status.synced and status.endpoint_count == 0
    assert status.no_endpoints_reason == ("ModelArts reports the service running with no instances "
                                          "(2 consecutive empty answers)")
    assert not store.ready()
    assert store.not_ready_reason() == f"llm: {status.no_endpoints_reason}"
    store.record_endpoints("llm", EPS)
    status = store.status("llm")
    assert status is not None and status.no_endpoints_reason is None and store.ready()


def test_one_drained_service_of_two_is_named_but_the_store_stays_ready() -> None:
    store = SnapshotStore([ServiceSpec(name="llm", service_id="a"), ServiceSpec(name="embed", service_id="b")],
                          DiscoveryConfig())
    store.record_endpoints("embed", EPS)
    assert store.without_endpoints() == [("llm", "not synced yet")]
    store.record_empty("llm", "stopped")
    assert store.ready()
    assert store.without_endpoints() == [("llm", "ModelArts reports the service stopped with no instances")]
    store.record_empty("llm", "stopped", reason="the controller's EndpointSlices list no endpoints")
    assert store.without_endpoints() == [("llm", "the controller's EndpointSlices list no endpoints")]
