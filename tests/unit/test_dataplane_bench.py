"""The data-plane benchmark's own logic: the cost-table variants really change the rendered config, and a
standalone run replaces scenario 1 in docs/benchmarks.md without touching the other scenarios."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.sinks.envoy.files import EnvoyFileSink
from bench.dataplane_bench import splice
from bench.minimal_envoy import minimal_config
from bench.scenarios import Check, ScenarioResult, agent_config, snapshot
from bench.scenarios.dataplane_arms import VARIANTS, _edit_file


def _render(tmp_path: Path, policy: dict[str, object]) -> EnvoyFileSink:
    config = agent_config(tmp_path / "files", 19901, [{"name": "llm", "listen_port": 18901, **policy}])
    sink = EnvoyFileSink(config)
    sink.publish(snapshot(config, {"llm": [("127.0.0.33", 8080)]}))
    return sink


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_each_variant_changes_the_rendered_config(tmp_path: Path, variant: object) -> None:
    from bench.scenarios.dataplane_arms import Variant

    assert isinstance(variant, Variant)
    base = _render(tmp_path / "base", {})
    changed = _render(tmp_path / "variant", dict(variant.policy))
    if variant.cluster_edit is not None:
        _edit_file(changed.layout.cds_path, variant.cluster_edit)
    if variant.listener_edit is not None:
        _edit_file(changed.layout.lds_path, variant.listener_edit)

    def resources(sink: EnvoyFileSink) -> list[object]:
        return [json.loads(p.read_text())["resources"] for p in (sink.layout.cds_path, sink.layout.lds_path)]

    if variant.name == "no-adaptive":
        # The loop is the agent's, not Envoy's: the variant differs by the loop not running.
        config = agent_config(tmp_path, 1, [{"name": "llm", "listen_port": 2, **variant.policy}])
        assert not config.services[0].adaptive_lb
        return
    assert resources(changed) != resources(base), f"{variant.name} left the rendered config as it was"


def test_stats_logger_edit_keeps_the_file_access_log(tmp_path: Path) -> None:
    sink = _render(tmp_path, {})
    stats = next(v for v in VARIANTS if v.name == "no-stream-stats")
    assert stats.listener_edit is not None
    _edit_file(sink.layout.lds_path, stats.listener_edit)
    listener = json.loads(sink.layout.lds_path.read_text())["resources"][0]
    logs = listener["filter_chains"][0]["filters"][0]["typed_config"]["access_log"]
    # Only the adaptive loop's per-host timing logger is left (it belongs to the adaptive row).
    assert [log["typed_config"]["counters"][0]["stat"]["name"] for log in logs] == ["adaptive_answers"]


def test_minimal_config_names_the_instance() -> None:
    text = minimal_config(18000, 19000, "127.0.0.33", 8080)
    assert "port_value: 18000" in text and "address: 127.0.0.33, port_value: 8080" in text
    assert "type: STATIC" in text and "access_log" not in text and "retry" not in text


DOC = """# Benchmarks

intro

<!-- GENERATED -->

## Summary: every figure beside its target

| scenario | figure | measured | target | verdict | note |
|---|---|---|---|---|---|
| 1. Old overhead | p99 | +3 ms | ≤ +1 ms | **MISS** |  |
| 2. Load balancing | ratio | 0.05 | ≤ 0.5 | **PASS** |  |

## 1. Old overhead

old text

## 2. Load balancing

lb text
"""


def _result() -> ScenarioResult:
    result = ScenarioResult("dataplane", "1. Data plane: new")
    result.checks.append(Check("p99 ratio", "1.02x", "≤ 1.05x", True))
    result.notes.append("new text")
    return result


def test_splice_replaces_scenario_one_only() -> None:
    text = splice(DOC, _result())
    assert "Old overhead" not in text and "old text" not in text
    assert "| 1. Data plane: new | p99 ratio | 1.02x | ≤ 1.05x | **PASS** |  |" in text
    assert text.index("| 1. Data plane: new") < text.index("| 2. Load balancing")
    assert text.index("## 1. Data plane: new") < text.index("new text") < text.index("## 2. Load balancing")
    assert text.endswith("## 2. Load balancing\n\nlb text\n")
    assert splice(text, _result()) == text  # a second run replaces its own section


def test_splice_inserts_when_scenario_one_is_missing() -> None:
    doc = DOC.replace("## 1. Old overhead\n\nold text\n\n", "").replace(
        "| 1. Old overhead | p99 | +3 ms | ≤ +1 ms | **MISS** |  |\n", "")
    text = splice(doc, _result())
    assert text.index("## Summary") < text.index("## 1. Data plane: new") < text.index("## 2. Load balancing")


def _sample(p99: float, tput: float, cpu: float, failed: int = 0) -> Any:
    import numpy as np

    from bench.scenarios.dataplane import Sample

    return Sample(p99_ms=p99, p50_ms=p99 / 4, failed=failed, sent=2000, latency=np.zeros(0), cpu_us_fixed=cpu * 2,
                  throughput=tput, cpu_us_max=cpu, busy_max=0.95)


def test_figures_survive_a_round_trip_through_the_results_file() -> None:
    from bench.scenarios.dataplane import FULL, Measured, _report, rerender

    m = Measured(
        head={"direct": [_sample(0.9, 14000, float("nan"))] * 3, "minimal": [_sample(1.7, 10000, 60)] * 3,
              "generated": [_sample(1.75, 9800, 62, failed=1)] * 3},
        added={"direct": [0.0] * 3, "minimal": [0.8] * 3, "generated": [0.85] * 3},
        pairs={v.name: [(_sample(1.75, 9800, 62), _sample(1.7, 9900, 61))] for v in VARIANTS},
        workers={k: [9000.0] for k in ("minimal", "minimal-2w", "generated", "generated-2w")},
        worker_busy={k: [0.9] for k in ("minimal", "minimal-2w", "generated", "generated-2w")},
        worker_cpu={k: [60.0] for k in ("minimal", "minimal-2w", "generated", "generated-2w")},
        rss_mib={"minimal": 60.0, "generated": 70.0}, nice_share=0.1, busy_before=[0.2])
    result = ScenarioResult("dataplane", "1. Data plane: new")
    _report(result, m, FULL)
    ratio = result.checks[0]
    assert ratio.value.startswith("1.06x") and ratio.passed is False and "costs Envoy +2 µs" in ratio.note
    assert result.checks[1].value.startswith("0.98x") and result.checks[1].passed is True
    assert result.checks[5].passed is False and result.checks[5].note == "generated: 3"
    stored = ScenarioResult.from_json(json.loads(json.dumps(result.to_json(), default=str)))
    again = rerender(stored)
    assert [(c.value, c.passed, c.note) for c in again.checks] == [(c.value, c.passed, c.note) for c in result.checks]
    assert [t.rows for t in again.tables] == [t.rows for t in result.tables]


def test_the_adaptive_loop_starts_off_envoys_core(monkeypatch: pytest.MonkeyPatch) -> None:
    # Issue 18: the loop's thread inherits the CPUs of the thread that starts it; started unpinned, its Python
    # could run on core 1, Envoy's, and delay the one worker. It must start on the load generator's core, and
    # the bench's own thread must get its CPUs back.
    import os

    from bench.env import ENVOY_CPU, LOADGEN_CPU
    from bench.scenarios import dataplane_arms

    cpus = {0, 1}
    seen: list[set[int]] = []

    def set_affinity(pid: int, new: set[int]) -> None:
        cpus.clear()
        cpus.update(new)

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(cpus))
    monkeypatch.setattr(os, "sched_setaffinity", set_affinity)

    class Runner:
        def apply(self, config: object) -> None:
            seen.append(set(cpus))

        def stop(self) -> None:
            pass

    arm = dataplane_arms.Arm("generated", "http://127.0.0.1:1/", 1, (Runner(), object()))  # type: ignore[arg-type]
    with arm:
        pass
    assert seen == [{int(LOADGEN_CPU)}] and LOADGEN_CPU != ENVOY_CPU
    assert cpus == {0, 1}
