"""The rate budget, in simulated time: no 60-second window may ever hold more calls than the budget."""

from __future__ import annotations

import threading
from bisect import bisect_left

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.clock import ManualClock
from agent.config import parse_config
from agent.modelarts.budget import BudgetRegistry, SlidingWindowLimit
from agent.modelarts.client import ModelArtsClient
from agent.snapshot import SnapshotStore
from agent.sources.modelarts import ModelArtsSource
from tests.unit.fakes import ReauthAuth, ScriptedSession

LIMIT = 20


def max_calls_in_any_window(times: list[float], window: float = 60.0) -> int:
    times = sorted(times)
    return max((bisect_left(times, t + window) - i for i, t in enumerate(times)), default=0)


def make_config(services: int, interval: float) -> object:
    return parse_config({
        "modelarts": {"iam_url": "http://127.0.0.1:1", "modelarts_url": "http://127.0.0.1:2", "project_id": "p"},
        "auth": {"mode": "token"},
        "discovery": {"default_poll_interval_seconds": interval, "empty_confirmations": 2},
        "services": [{"name": f"svc-{i}", "service_id": f"id-{i}"} for i in range(services)],
    })


def build(clock: ManualClock, session: ScriptedSession, services: int, interval: float):
    config = make_config(services, interval)
    budgets = BudgetRegistry(LIMIT, 2000, 2.0, clock=clock)
    budget = budgets.budget("user:a", "domain:a")
    client = ModelArtsClient("http://127.0.0.1:2", "p", ReauthAuth(), budget, session, 10.0, 1 << 20, clock,
                             threading.Event())
    store = SnapshotStore(config.services, config.discovery, clock)  # type: ignore[attr-defined]
    return ModelArtsSource(config, store, client, clock)  # type: ignore[arg-type]


OUTCOMES = st.sampled_from(["ok", "ok", "ok", "empty", "500", "429", "429:7", "401", "timeout", "reset", "malformed"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    services=st.integers(min_value=1, max_value=40),
    interval=st.floats(min_value=1, max_value=120),
    script=st.lists(OUTCOMES, min_size=1, max_size=30),
    restarts=st.lists(st.floats(min_value=1, max_value=900), max_size=3),
)
def test_no_window_exceeds_budget(services: int, interval: float, script: list[str], restarts: list[float]) -> None:
    clock = ManualClock()
    start = clock.monotonic()
    session = ScriptedSession(clock, script)
    source = build(clock, session, services, interval)
    pending_restarts = sorted(start + r for r in restarts)
    while clock.monotonic() < start + 900:
        if pending_restarts and clock.monotonic() >= pending_restarts[0]:
            pending_restarts.pop(0)
            # A crashed and restarted process: fresh budget state, same API, same clock.
            source = build(clock, session, services, interval)
        source.step()
    assert session.calls, "the simulation made no calls at all"
    assert max_calls_in_any_window(session.calls) <= LIMIT


def test_many_services_stretch_the_interval_instead_of_exceeding_budget() -> None:
    clock = ManualClock()
    session = ScriptedSession(clock, ["ok"])
    source = build(clock, session, services=50, interval=5)
    start = clock.monotonic()
    while clock.monotonic() < start + 600:
        source.step()
    per_minute = len(session.calls) / 10
    assert 18 <= per_minute <= LIMIT, per_minute
    spec = source._config.services[0]
    assert source.effective_interval(spec) == pytest.approx(50 * 62 / LIMIT)


def test_warm_start_waits_one_spacing_then_paces() -> None:
    limit = SlidingWindowLimit(20, 62.0, now=0.0)
    assert limit.wait_time(0.0) == pytest.approx(3.1)
    limit.record(3.1)
    assert limit.wait_time(3.1) == pytest.approx(3.1)
    cold = SlidingWindowLimit(20, 62.0, now=0.0, warm_start=False)
    assert cold.wait_time(0.0) == 0


def test_429_pauses_the_whole_identity() -> None:
    clock = ManualClock()
    budgets = BudgetRegistry(20, 2000, 2.0, clock=clock, warm_start=False)
    budget = budgets.budget("u", "t")
    assert budget.try_acquire() == 0
    budget.penalize(30)
    assert budget.try_acquire() == pytest.approx(30)
    clock.advance(30)
    assert budget.try_acquire() == 0


def test_tenant_limit_is_shared_between_users() -> None:
    clock = ManualClock()
    budgets = BudgetRegistry(per_user_per_minute=100, per_tenant_per_minute=4, safety_margin_seconds=0,
                             clock=clock, warm_start=False)
    a, b = budgets.budget("a", "t"), budgets.budget("b", "t")
    times = []
    for budget in (a, b, a, b, a, b):
        budget.acquire()
        times.append(clock.monotonic())
    assert max_calls_in_any_window(times) <= 4
