"""The rate budget, in simulated time: no 60-second window may ever hold more calls than the budget."""

from __future__ import annotations

import json
import stat
import threading
from bisect import bisect_left
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.clock import ManualClock
from agent.config import parse_config
from agent.modelarts.budget import BudgetRegistry, SlidingWindowLimit
from agent.modelarts.client import ModelArtsClient
from agent.modelarts.host_state import HostStateError, SharedBudgetFile, TokenCache, private_dir
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


# -- host-wide: every process of one user on the host shares one budget ------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(order=st.lists(st.integers(min_value=0, max_value=2), min_size=25, max_size=80),
       restarts=st.lists(st.integers(min_value=0, max_value=79), max_size=4))
def test_processes_sharing_a_state_dir_never_exceed_the_budget(tmp_path_factory: pytest.TempPathFactory,
                                                              order: list[int], restarts: list[int]) -> None:
    """Three 'processes' (registries, cold starts like `endpoints`) take turns; some restart from scratch."""
    state = tmp_path_factory.mktemp("state")
    clock = ManualClock()

    def process() -> BudgetRegistry:
        return BudgetRegistry(LIMIT, 2000, 2.0, clock=clock, warm_start=False, shared=SharedBudgetFile(state))

    registries = [process() for _ in range(3)]
    times = []
    for step, who in enumerate(order):
        if step in restarts:
            registries[who] = process()
        assert registries[who].budget("user:a", "domain:a", scope="https://ma").acquire()
        times.append(clock.monotonic())
    assert max_calls_in_any_window(times) <= LIMIT
    # Alone, each process would have called at once: the shared log is what paced them.
    assert times[-1] - times[0] >= (len(times) - 1) * 62.0 / LIMIT - 1e-6


def test_a_429_pause_survives_a_restart(tmp_path: Path) -> None:
    clock = ManualClock()
    first = BudgetRegistry(20, 2000, 2.0, clock=clock, shared=SharedBudgetFile(tmp_path))
    first.budget("u", "t", scope="s").penalize(120)
    clock.advance(10)
    restarted = BudgetRegistry(20, 2000, 2.0, clock=clock, shared=SharedBudgetFile(tmp_path))
    assert restarted.budget("u", "t", scope="s").try_acquire() == pytest.approx(110)
    # Another endpoint (scope) or identity is not paused.
    assert restarted.budget("v", "t2", scope="s").try_acquire() == pytest.approx(3.1)


def test_state_from_before_a_reboot_or_corrupt_is_ignored(tmp_path: Path) -> None:
    clock = ManualClock()
    BudgetRegistry(20, 2000, 2.0, clock=clock, shared=SharedBudgetFile(tmp_path)).budget("u", "t").penalize(500)
    path = tmp_path / "budget.json"
    data = json.loads(path.read_text())
    data["boot_id"] = "another-boot"
    path.write_text(json.dumps(data))
    fresh = BudgetRegistry(20, 2000, 2.0, clock=clock, warm_start=False, shared=SharedBudgetFile(tmp_path))
    assert fresh.budget("u", "t").try_acquire() == 0
    path.write_text("{not json")
    assert BudgetRegistry(20, 2000, 2.0, clock=clock, warm_start=False,
                          shared=SharedBudgetFile(tmp_path)).budget("x", "t").try_acquire() == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_hostile_pause_in_the_file_is_clamped(tmp_path: Path) -> None:
    clock = ManualClock()
    shared = SharedBudgetFile(tmp_path)
    budget = BudgetRegistry(20, 2000, 2.0, clock=clock, warm_start=False, shared=shared).budget("u", "t")
    assert budget.try_acquire() == 0  # one call: this identity now has its entries
    with shared.locked() as entries:
        assert len(entries) == 2
        for entry in entries.values():
            entry["paused_until"] = 1e300
            entry["calls"] = ["x", None, float("nan"), 1e300]
    assert 3590 <= budget.try_acquire() <= 3600


def test_an_open_or_foreign_state_dir_is_refused(tmp_path: Path) -> None:
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o777)
    open_dir.chmod(0o777)
    with pytest.raises(HostStateError, match="open to other users"):
        SharedBudgetFile(open_dir)
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    with pytest.raises(HostStateError, match="not a directory"):
        TokenCache(link)
    assert stat.S_IMODE(private_dir(tmp_path / "new" / "dir").stat().st_mode) == 0o700


def test_token_cache_files_are_private_and_named_by_a_hash(tmp_path: Path) -> None:
    cache = TokenCache(tmp_path)
    cache.put("k1", "MIIsecret-token", refresh_at=2000.0)
    files = list(tmp_path.iterdir())
    assert [f.name for f in files] == ["token-k1.json"] and stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert cache.get("k1", 1000.0) == ("MIIsecret-token", 2000.0)
    assert cache.get("k1", 2000.0) is None  # due for refresh
    cache.drop("k1", "another-token")  # someone else's newer token is kept
    assert cache.get("k1", 1000.0) is not None
    cache.drop("k1", "MIIsecret-token")
    assert cache.get("k1", 1000.0) is None
    files[0].parent.joinpath("token-k2.json").write_text('{"token": "planted", "refresh_at": 9e9}')
    files[0].parent.joinpath("token-k2.json").chmod(0o644)
    assert cache.get("k2", 1000.0) is None  # readable by others: not trusted
