"""Scenario 8 run on its own (`python -m bench.scenarios.streaming`) stops every Envoy and emulator it started when
a harness timeout sends it SIGTERM: before, the three Envoys and the emulator outlived it, holding their ports."""

from __future__ import annotations

from pathlib import Path

from tests.bench_children import sigterm_once_envoy_is_up


def test_sigterm_stops_the_scenarios_envoys_and_emulator(tmp_path: Path) -> None:
    _, left = sigterm_once_envoy_is_up(["bench.scenarios.streaming", "--quick", "--latency-qos", "off"], tmp_path)
    assert left == [], "children outlived the scenario"
