"""Each cell of the adaptive matrix (bench/adaptive_matrix.py) starts from a fresh feedback loop.

The cells of a group share one rig, and they shared its loop: the 90 % load cell ran right after the two-slow
cell, so it began with the instance that cell had slowed floored (fast again now, and to be probed back in)
and the slow one already floored, and the slow spell after it began with the recovery test's spread and the
prior of a near-capacity load (the 20.1 s recovery of the 12:40 UTC run). A cell's figure then depended on
the cells before it. Now every cell begins with what a freshly started agent has."""

from __future__ import annotations

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


def test_every_cell_starts_from_a_fresh_loop(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[tuple[str, int]] = []

    def cell(name: str) -> Any:
        def body(rig: FakeRig, *_args: object) -> Scenario:
            seen.append((name, rig.loops))
            return Scenario(name, name)
        return body

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
