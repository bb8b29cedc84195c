"""bench/adaptive_bench.interleaved, the round loop of the adaptive benchmarks (its matrix's stream cells
included): the order rotates every round, each round's run is pooled per policy with its p99 recorded,
and a cell that measures differently (token streams) passes its own run."""

from __future__ import annotations

from typing import Any, cast

from bench.adaptive_bench import Run, interleaved


class FakeRig:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def run(self, policy: str, rate: float, segment: float) -> Run:
        self.calls.append(policy)
        return Run(policy, rate, latency=[0.001 * len(self.calls)], status=[200])

    def weights(self) -> dict[str, int]:
        return {}

    def loop_state(self) -> str:
        return "steady"


def test_the_order_rotates_and_every_round_is_pooled() -> None:
    rig = FakeRig()
    pooled = interleaved(cast(Any, rig), ["a", "b", "c"], 10.0, 1.0, 3, lambda _: None)
    assert rig.calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert {p: len(r.latency) for p, r in pooled.items()} == {"a": 3, "b": 3, "c": 3}
    assert pooled["a"].rounds_p99 == [1.0, 6.0, 8.0]


def test_a_cell_can_measure_its_own_runs() -> None:
    rig = FakeRig()
    seen: list[tuple[str, int]] = []

    def streams(policy: str, n: int) -> Run:
        seen.append((policy, n))
        return Run(policy, 1.0, latency=[0.002], status=[500])

    pooled = interleaved(cast(Any, rig), ["default", "adaptive"], 1.0, 1.0, 2, lambda _: None, streams)
    assert rig.calls == []
    assert seen == [("default", 0), ("adaptive", 0), ("adaptive", 1), ("default", 1)]
    assert pooled["adaptive"].errors == 2 and pooled["default"].rounds_p99 == [2.0, 2.0]
