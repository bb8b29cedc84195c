"""Each cell of the adaptive matrix (bench/adaptive_matrix.py) starts from a fresh feedback loop.

The cells of a group share one rig, and they shared its loop: the 90 % load cell ran right after the two-slow
cell, so it began with the instance that cell had slowed floored (fast again now, and to be probed back in)
and the slow one already floored, and the slow spell after it began with the recovery test's spread and the
prior of a near-capacity load (the 20.1 s recovery of the 12:40 UTC run). A cell's figure then depended on
the cells before it. Now every cell begins with what a freshly started agent has."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import bench.adaptive_bench as adaptive_bench
import bench.adaptive_matrix as matrix
from bench.adaptive_bench import Scenario


class FakeRig:
    """Stands in for the rig: counts the loops it was given, starts nothing."""

    def __init__(self, workdir: Path, transport: str = "files", concurrency: int = 1) -> None:
        self.concurrency = concurrency
        self.loops = 1
        self.load = type("Load", (), {"tool": "none"})()

    def fresh_loop(self) -> None:
        self.loops += 1

    def close(self) -> None:
        pass


def recording(into: list[tuple[str, int]], what: Callable[[FakeRig], int]) -> Callable[[str], Any]:
    """A stand-in cell body per name that records (name, `what` of the rig it ran on)."""
    def cell(name: str) -> Any:
        def body(rig: FakeRig, *_args: object) -> Scenario:
            into.append((name, what(rig)))
            return Scenario(name, name)
        return body
    return cell


def test_every_cell_starts_from_a_fresh_loop(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[tuple[str, int]] = []
    cell = recording(seen, lambda rig: rig.loops)
    monkeypatch.setattr(matrix, "Rig", FakeRig)
    monkeypatch.setattr(matrix, "cell_slow", cell("slow"))
    monkeypatch.setattr(matrix, "cell_high_load", cell("high load"))
    monkeypatch.setattr(matrix, "cell_identical", cell("identical"))
    monkeypatch.setattr(adaptive_bench, "quiet", lambda *_a, **_k: None)
    monkeypatch.setattr(adaptive_bench, "measure_cost", lambda *_a, **_k: {})
    only = frozenset({"identical exponential 1 slot", "one slow", "two slow", "90 % load"})
    scenarios, _ = matrix.run_matrix(tmp_path, lambda _text: None, groups=("a",), only=only)
    assert [s.name for s in scenarios] == ["identical", "slow", "slow", "high load"]
    loops = [n for _, n in seen]
    assert len(set(loops)) == len(loops), seen  # a loop of its own for each cell


def test_group_c_runs_the_break_cells_on_a_1_slot_rig_of_their_own(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    """Group a could not fit its nine cells in a 10-minute locked run with a fresh loop each: heavy tails and
    pauses (1-slot cells) moved to group c, after its 4-slot rig, on a 1-slot rig."""
    slots: list[tuple[str, int]] = []
    cell = recording(slots, lambda rig: rig.concurrency)
    monkeypatch.setattr(matrix, "Rig", FakeRig)
    monkeypatch.setattr(matrix, "cell_identical", cell("identical"))
    monkeypatch.setattr(matrix, "cell_heavy_tail", cell("heavy tail"))
    monkeypatch.setattr(matrix, "cell_pauses", cell("pauses"))
    monkeypatch.setattr(adaptive_bench, "quiet", lambda *_a, **_k: None)
    only = frozenset({"identical exponential 4 slots", "heavy tail", "pauses"})
    matrix.run_matrix(tmp_path, lambda _text: None, groups=("c",), only=only)
    assert slots == [("identical", 4), ("heavy tail", 1), ("pauses", 1)]
    assert "heavy tail" not in matrix.CELLS["a"] and "pauses" in matrix.CELLS["c"]
