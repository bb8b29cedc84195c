"""Last-known-good and throttling against the emulator's injected faults, through the real poller."""

from __future__ import annotations

import threading
import time
from bisect import bisect_left

import pytest
from modelarts_emulator import Emulator

from agent.modelarts.budget import BudgetRegistry
from agent.modelarts.client import build_client
from agent.snapshot import SnapshotStore
from agent.sources.modelarts import ModelArtsSource
from tests.integration.conftest import agent_config, emulator_config

pytestmark = pytest.mark.usefixtures("creds_env")


def make_source(emu: Emulator, budgets: BudgetRegistry | None = None, **overrides: object):  # type: ignore[no-untyped-def]
    config = agent_config(emu, "password", **overrides)
    budgets = budgets or BudgetRegistry(600, 2000, 0.0, warm_start=False)
    client = build_client(config, budgets)
    store = SnapshotStore(config.services, config.discovery)
    return ModelArtsSource(config, store, client), store, config.services[0]


def served(store: SnapshotStore) -> list[str]:
    return [e.address for e in store.snapshot.services["llm"].endpoints]


@pytest.mark.parametrize(("kind", "params"), [
    ("5xx", {"status": 503}),
    ("malformed", {}),
    ("wrong_types", {"variant": "endpoints_dict"}),
    ("wrong_types", {"variant": "body_array"}),
    ("timeout", {"seconds": 5}),
    ("reset", {}),
    ("oversized", {"size_mb": 8}),
    ("slowloris", {"interval_seconds": 0.5}),
])
def test_faults_keep_last_known_good(emulator: Emulator, kind: str, params: dict[str, object]) -> None:
    source, store, spec = make_source(emulator)
    source.poll(spec)
    good = served(store)
    assert len(good) == 3
    emulator.admin.inject_fault(kind, service_id="svc-llm", count=1, **params)
    source.poll(spec)
    status = store.status("llm")
    assert status is not None and status.consecutive_failures == 1, status
    assert served(store) == good
    source.poll(spec)
    assert store.status("llm").consecutive_failures == 0 and served(store) == good  # type: ignore[union-attr]


def test_failures_past_the_stale_age_mark_the_service_stale(emulator: Emulator) -> None:
    source, store, spec = make_source(emulator)
    source.poll(spec)
    emulator.admin.inject_fault("5xx", service_id="svc-llm")
    source.poll(spec)
    assert not store.status("llm").stale  # type: ignore[union-attr]
    time.sleep(3.1)
    source.poll(spec)
    assert store.status("llm").stale and len(served(store)) == 3  # type: ignore[union-attr]
    emulator.admin.clear_faults()
    source.poll(spec)
    assert not store.status("llm").stale  # type: ignore[union-attr]


def test_hostile_ips_are_dropped_and_valid_ones_kept(emulator: Emulator) -> None:
    source, store, spec = make_source(emulator, discovery={"allowed_cidrs": ["127.0.0.10/32"]})
    emulator.admin.inject_fault("hostile_ips", service_id="svc-llm", count=1)
    source.poll(spec)
    addresses = served(store)
    assert all(a.startswith("127.0.0.10:") for a in addresses) and addresses
    assert store.status("llm").rejected_last_poll >= 10  # type: ignore[union-attr]


def test_empty_list_while_running_needs_confirmations(emulator: Emulator) -> None:
    source, store, spec = make_source(emulator)
    source.poll(spec)
    emulator.admin.inject_fault("empty", service_id="svc-llm")
    source.poll(spec)
    assert len(served(store)) == 3
    source.poll(spec)
    assert served(store) == []


def test_stopped_service_drains_at_once(emulator: Emulator) -> None:
    source, store, spec = make_source(emulator)
    source.poll(spec)
    emulator.admin.inject_fault("empty", service_id="svc-llm")
    emulator.admin.set_status("svc-llm", "stopped")
    source.poll(spec)
    assert served(store) == []


def test_429_pauses_the_identity_and_honours_retry_after(emulator: Emulator) -> None:
    source, store, spec = make_source(emulator)
    source.poll(spec)
    emulator.admin.inject_fault("429", service_id="svc-llm", count=1, retry_after=2)
    delay = source.poll(spec)
    assert delay >= 2
    status = store.status("llm")
    assert status is not None and status.rate_limited and len(served(store)) == 3
    started = time.monotonic()
    source.poll(spec)
    assert time.monotonic() - started >= 1.8, "the next call did not wait for Retry-After"
    assert not store.status("llm").rate_limited  # type: ignore[union-attr]


def test_scale_out_and_in_are_followed(emulator: Emulator) -> None:
    source, store, spec = make_source(emulator)
    source.poll(spec)
    emulator.admin.scale("svc-llm", 5)
    source.poll(spec)
    assert len(served(store)) == 5
    emulator.admin.scale("svc-llm", 2)
    source.poll(spec)
    assert len(served(store)) == 2


def max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    return max((bisect_left(times, t + window) - i for i, t in enumerate(times)), default=0)


def test_running_agent_never_trips_the_emulator_limit() -> None:
    """Eight services that all want 1 s polls, against the emulator's real per-user limit (window shortened)."""
    emu_cfg = emulator_config(limits={"per_user_per_minute": 10, "window_seconds": 3.0})
    emu_cfg.services.extend(
        type(emu_cfg.services[0]).model_validate({"name": f"extra-{i}", "service_id": f"svc-{i}", "instances": 1})
        for i in range(7)
    )
    with Emulator(emu_cfg) as emu:
        services = [{"name": "llm", "service_id": "svc-llm"}]
        services += [{"name": f"extra-{i}", "service_id": f"svc-{i}"} for i in range(7)]
        budgets = BudgetRegistry(10, 2000, 0.3, window_seconds=3.0)
        source, store, _ = make_source(emu, budgets, services=services)
        stop = threading.Event()
        source._stop = stop
        thread = threading.Thread(target=source.run)
        thread.start()
        time.sleep(10)
        stop.set()
        thread.join(10)
        calls = [c for c in emu.admin.calls() if c.api == "modelarts"]
        assert len(calls) >= 20
        assert not [c for c in calls if c.status == 429]
        assert max_in_window([c.time for c in calls], 3.0) <= 10
        assert all(s.synced for s in store.snapshot.services.values())
