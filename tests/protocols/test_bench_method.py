"""The method of the streaming benchmark (bench/scenarios/streaming.py, scenario 8): the arms interleaved call by
call and stream by stream, intervals from resampling paired blocks, and a time budget that covers the scenario.
Counts and arithmetic only: the figures themselves live in the benchmark."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from modelarts_emulator import Emulator, ServiceConfig

from bench import run as bench_run
from bench.scenarios import streaming
from tests.protocols.paths import endpoints_of

ARMS = ("direct", "minimal", "sidecar")


def test_the_run_budgets_what_the_scenario_may_take() -> None:
    full, quick = bench_run.SCENARIOS["streaming"][1:]
    assert full >= streaming.Options.default(quick=False).max_seconds
    assert quick >= streaming.Options.default(quick=True).max_seconds


def test_streams_take_turns_arm_by_arm_in_a_rotating_order() -> None:
    order: list[str] = []

    class Fake:
        def __init__(self, arm: str) -> None:
            self.arm = arm

        def ttft(self) -> float:
            order.append(self.arm)
            return float(len(order))

    clients = {arm: Fake(arm) for arm in ARMS}
    blocks = streaming.streams_interleaved(clients, 7, 3)  # type: ignore[arg-type]
    assert order[:9] == ["direct", "minimal", "sidecar", "minimal", "sidecar", "direct",
                         "sidecar", "direct", "minimal"]
    for arm in ARMS:
        assert [len(b) for b in blocks[arm]] == [3, 3, 1]
    # Within a block every arm ran in the same stretch of time: its values interleave with the others'.
    assert max(blocks["direct"][0]) < min(blocks["sidecar"][1])


def test_a_stall_that_hits_every_arm_alike_cancels_in_the_paired_interval() -> None:
    # The sidecar adds 0.5 ms to every call; one block in ten holds a 100 ms stall of the machine, in both arms
    # (they ran interleaved, so a stall lands on both). Resampling the same blocks for both arms keeps the
    # difference at 0.5 ms however often that block is drawn: the stall widens neither the figure nor its interval.
    direct = [[1.0 + 0.001 * i for i in range(200)] for _ in range(10)]
    direct[3] = [100.0] * 20 + direct[3][20:]
    units = {"direct": direct, "sidecar": [[v + 0.5 for v in block] for block in direct]}
    added, low, high = streaming.added_p99(units, "sidecar", "direct")
    assert added == pytest.approx(0.5)
    assert low == pytest.approx(0.5)
    assert high == pytest.approx(0.5)
    passed, unsure = streaming.verdict(low, high, 1.0)
    assert passed and not unsure


def test_round_differences_are_paired_round_by_round() -> None:
    rounds = {"direct": [[1.0] * 100, [5.0] * 100], "sidecar": [[1.5] * 100, [5.2] * 100]}
    assert streaming.round_differences(rounds, "sidecar", "direct") == pytest.approx([0.5, 0.2])


def test_unary_calls_go_to_every_arm_at_the_rate_in_blocks(emulator: Callable[..., Emulator]) -> None:
    llm = ServiceConfig(name="llm", schema="grpc", instances=1)
    emu = emulator(llm)
    [endpoint] = endpoints_of(emu, llm.service_id)
    address = f"{endpoint.ip}:{endpoint.port}"
    blocks, failed = streaming.unary_interleaved(dict.fromkeys(ARMS, address), rate=50.0, seconds=0.4,
                                                 block_seconds=0.1)
    assert failed == dict.fromkeys(ARMS, 0)
    for arm in ARMS:
        assert [len(b) for b in blocks[arm]] == [5, 5, 5, 5]
        assert all(v > 0 for b in blocks[arm] for v in b)
