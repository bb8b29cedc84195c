"""bench/streams_adaptive.py stops its Envoy and its emulator when a harness timeout sends it SIGTERM
(before, Python died at once and both outlived it, holding their ports and a core's worth of work)."""

from __future__ import annotations

from pathlib import Path

from tests.bench_children import sigterm_once_envoy_is_up


def test_sigterm_stops_the_benchs_envoy_and_emulator(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    status, left = sigterm_once_envoy_is_up(["bench.streams_adaptive", "--cells", "identical", "--rounds", "2",
                                             "--segment", "60", "--output", str(out)], tmp_path)
    assert status != 0
    assert left == [], "Envoy or the emulator outlived the bench"
    assert not out.exists()  # an interrupted run writes nothing
