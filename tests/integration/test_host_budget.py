"""One IAM user, several processes on one host: the 20/min promise holds for all of them together.

Checked on the emulator's call log (what the gateway saw), not on the agent's own counters.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from bisect import bisect_left
from pathlib import Path
from typing import Any

import pytest
import yaml
from modelarts_emulator import Emulator
from modelarts_emulator.config import DEFAULT_PASSWORD

from agent.app.run import AgentRuntime
from agent.cli.main import main
from agent.config import AgentConfig, parse_config
from agent.modelarts.budget import BudgetRegistry
from agent.modelarts.client import build_client
from agent.modelarts.host_state import SharedBudgetFile
from agent.snapshot import SnapshotStore
from agent.sources.modelarts import ModelArtsSource
from tests.integration.conftest import agent_config, emulator_config
from tests.ports import free_port

pytestmark = pytest.mark.usefixtures("creds_env")


def max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    return max((bisect_left(times, t + window) - i for i, t in enumerate(times)), default=0)


def test_two_agents_of_one_user_never_exceed_the_limit_together(tmp_path: Path) -> None:
    """Two pollers (two budget registries, as two processes have) share a state dir; each alone would
    use the whole budget, so without sharing the gateway sees twice the limit and answers 429."""
    emu_cfg = emulator_config(limits={"per_user_per_minute": 8, "window_seconds": 3.0})
    emu_cfg.services.extend(type(emu_cfg.services[0]).model_validate(
        {"name": f"extra-{i}", "service_id": f"svc-{i}", "instances": 1}) for i in range(5))
    with Emulator(emu_cfg) as emu:
        # Six services wanting 1 s polls: far more than the budget, in each process.
        services = [{"name": "llm", "service_id": "svc-llm"}] + [
            {"name": f"extra-{i}", "service_id": f"svc-{i}"} for i in range(5)]
        config = agent_config(emu, "password", services=services)
        stop = threading.Event()
        threads, stores = [], []
        for _ in range(2):
            budgets = BudgetRegistry(8, 2000, 0.3, window_seconds=3.0, shared=SharedBudgetFile(tmp_path))
            store = SnapshotStore(config.services, config.discovery)
            source = ModelArtsSource(config, store, build_client(config, budgets, stop=stop), stop=stop)
            threads.append(threading.Thread(target=source.run))
            stores.append(store)
        for thread in threads:
            thread.start()
        time.sleep(9)
        stop.set()
        for thread in threads:
            thread.join(10)
        calls = [c for c in emu.admin.calls() if c.api == "modelarts"]
        assert len(calls) >= 12, "the pollers hardly called at all"
        assert not [c for c in calls if c.status == 429]
        assert max_in_window([c.time for c in calls], 3.0) <= 8
        assert all(s.ready() for s in stores)


def write_config(path: Path, config: AgentConfig) -> Path:
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)))
    return path


def endpoints_cli(config_path: Path, *extra: str) -> list[dict[str, Any]]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["endpoints", "--config", str(config_path), "--json", *extra])
    assert code == 0, out.getvalue()
    result: list[dict[str, Any]] = json.loads(out.getvalue())
    return result


def test_endpoints_in_a_loop_stays_in_budget_and_reuses_one_token(emulator: Emulator, tmp_path: Path) -> None:
    """Each `endpoints` is a new, cold process; the host-wide state paces them and shares the token."""
    config = agent_config(emulator, "password", admin={"port": free_port()},
                          budget={"per_user_per_minute": 30, "safety_margin_seconds": 0,
                                  "state_dir": str(tmp_path / "state")})
    path = write_config(tmp_path / "agent.yaml", config)
    for _ in range(4):
        assert len(endpoints_cli(path)[0]["endpoints"]) == 3
    calls = [c for c in emulator.admin.calls() if c.api == "modelarts"]
    gaps = [b.time - a.time for a, b in itertools.pairwise(calls)]
    # 60 s / 30 calls = 2 s apart, across processes (as sent; the first one's arrival is delayed by its
    # token request, which comes after the budget slot, so the gateway may see a little less).
    assert len(calls) == 4 and min(gaps) >= 1.5 and calls[-1].time - calls[0].time >= 5.5, gaps
    assert len([c for c in emulator.admin.calls() if c.api == "iam"]) == 1, "one token for the whole loop"
    token_files = list((tmp_path / "state").glob("token-*.json"))
    assert len(token_files) == 1 and token_files[0].stat().st_mode & 0o077 == 0


def runtime_config(emu: Emulator, tmp_path: Path, port: int = 0, **budget: Any) -> AgentConfig:
    base = agent_config(emu, "password", services=[{"name": "shared", "service_id": "svc-llm"}])
    return parse_config({**base.model_dump(mode="json"), "admin": {"port": port},
                         "budget": {"per_user_per_minute": 600, "safety_margin_seconds": 0,
                                    "state_dir": str(tmp_path / "state"), **budget}})


def wait_for(check: Any, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_endpoints_reads_a_running_agents_view(emulator: Emulator, tmp_path: Path) -> None:
    port = free_port()
    config = runtime_config(emulator, tmp_path, port)
    runtime = AgentRuntime(config)
    runtime.start()
    try:
        wait_for(runtime.store.ready, 15)
        path = write_config(tmp_path / "agent.yaml", config)
        seen = len(emulator.admin.calls(api="modelarts"))
        result = endpoints_cli(path)
        expected = sorted(f"{i.ip}:{i.port}" for i in emulator.admin.instances("svc-llm"))
        assert result[0]["source"] == "agent"
        assert sorted(f"{e['ip']}:{e['port']}" for e in result[0]["endpoints"]) == expected
        assert {e["schema"] for e in result[0]["endpoints"]} == {"http"}
        # The look-up cost nothing: no ModelArts call beyond the running agent's own polls.
        own_polls = runtime.client.budget.calls_total  # the calls this process was granted
        assert len(emulator.admin.calls(api="modelarts")) - seen <= own_polls
        before = len([c for c in emulator.admin.calls(api="modelarts")])
        fresh = endpoints_cli(path, "--fresh")
        assert fresh[0]["source"] == "api" and len(fresh[0]["endpoints"]) == 3
        assert len(emulator.admin.calls(api="modelarts")) > before
    finally:
        runtime.stop()


def test_a_429_pause_is_honoured_by_the_next_process(emulator: Emulator, tmp_path: Path) -> None:
    config = runtime_config(emulator, tmp_path)
    emulator.admin.inject_fault("429", service_id="svc-llm", count=1, retry_after=30)
    first = AgentRuntime(config)
    first.start()
    try:
        wait_for(lambda: any(c.status == 429 for c in emulator.admin.calls(api="modelarts")), 15)
    finally:
        first.stop()
    restarted_at = emulator.admin.now()
    second = AgentRuntime(config)  # a restart: new process state, the same host
    second.start()
    try:
        time.sleep(6)  # a forgetful agent calls again one pacing interval (0.1 s) after start
        after = [c for c in emulator.admin.calls(api="modelarts") if c.time >= restarted_at]
        assert after == [], [(c.time - restarted_at, c.status) for c in after]
        usage = second.status()["budgets"][0]
        assert 15 < usage["next_slot_seconds"] <= 30
    finally:
        second.stop()


def test_run_and_endpoints_processes_share_one_budget(emulator: Emulator, tmp_path: Path) -> None:
    """The issue's case: `endpoints --fresh` next to a running `run`, both real processes, one IAM user."""
    emulator.admin.set_limits(per_user_per_minute=30)
    config = agent_config(emulator, "password", admin={"port": free_port()},
                          envoy={"output_dir": str(tmp_path / "envoy")},
                          budget={"per_user_per_minute": 30, "state_dir": str(tmp_path / "state")})
    path = write_config(tmp_path / "agent.yaml", config)
    env = {**os.environ, "MODELARTS_PASSWORD": DEFAULT_PASSWORD}
    agent = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(path)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: len(emulator.admin.calls(api="modelarts")) >= 2, 30)
        for _ in range(3):
            lookup = subprocess.run([sys.executable, "-m", "agent", "endpoints", "--config", str(path), "--json",
                                     "--fresh"], env=env, capture_output=True, text=True, timeout=60)
            assert lookup.returncode == 0, lookup.stderr
            assert len(json.loads(lookup.stdout)[0]["endpoints"]) == 3
    finally:
        agent.terminate()
        agent.wait(30)
    calls = emulator.admin.calls(api="modelarts")
    assert not [c for c in calls if c.status == 429]
    gaps = [b.time - a.time for a, b in itertools.pairwise(calls)]
    # (60 s + 2 s) / 30 = 2.07 s between any two calls of the user, whichever process made them.
    assert len(calls) >= 5 and min(gaps) >= 1.5, [round(g, 2) for g in gaps]
    assert len(emulator.admin.calls(api="iam")) <= 2  # the agent's token, reused by every endpoints
