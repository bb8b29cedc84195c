"""The dedicated throughput run's logic: the verdict follows the 95% interval of the ratio (not one lucky
median), the interval is reproducible, and its config edits change only the adaptive timing logger's filter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from agent.envoy.access_log import BODY_TAG
from agent.sinks.envoy.files import EnvoyFileSink
from bench.dataplane_throughput import CEL_FILTER, EXTRA, Visit, bootstrap_median_ci, report_into
from bench.scenarios import ScenarioResult, agent_config, snapshot
from bench.scenarios.dataplane_arms import _edit_file


def _visits(ratios: list[float]) -> list[Visit]:
    out = []
    for block, ratio in enumerate(ratios):
        out.append(Visit("minimal", 32, block, 5000.0, 5000, 180.0, 0.9, (0.9, 0.9)))
        out.append(Visit("generated", 32, block, 5000.0 * ratio, 5000, 180.0 / ratio, 0.9, (0.9, 0.9)))
    return out


def _verdict(ratios: list[float]) -> str:
    result = ScenarioResult("dataplane", "1. Data plane")
    record = {"visits": _visits(ratios), "blocks": len(ratios), "window": 1.0, "ran_at": "now", "loadavg": [0.1, 0.2]}
    report_into(result, record, 0.97, 32)
    return result.checks[0].status


def test_verdict_follows_the_interval() -> None:
    assert _verdict([0.99, 1.0, 1.01, 0.98, 1.02, 1.0, 0.99, 1.01]) == "PASS"
    assert _verdict([0.86, 0.87, 0.85, 0.88, 0.86, 0.87, 0.86, 0.88]) == "MISS"
    # The median alone is below the target, but the blocks spread across it: not decided.
    assert _verdict([0.80, 1.10, 0.96, 1.05, 0.85, 0.96, 1.08, 0.82]) == "INCONCLUSIVE"


def test_interval_brackets_the_median_and_is_reproducible() -> None:
    values = list(np.linspace(0.8, 1.0, 15))
    lo, hi = bootstrap_median_ci(values)
    assert lo < float(np.median(values)) < hi
    assert (lo, hi) == bootstrap_median_ci(values)


def _rendered_logs(tmp_path: Path, name: str) -> tuple[list[Any], list[Any]]:
    """The access loggers of the generated listener, before and after variant `name`'s edit."""
    config = agent_config(tmp_path / name, 19902, [{"name": "llm", "listen_port": 18902}])
    sink = EnvoyFileSink(config)
    sink.publish(snapshot(config, {"llm": [("127.0.0.33", 8080)]}))
    before = json.loads(sink.layout.lds_path.read_text())
    edit = EXTRA[name].listener_edit
    assert edit is not None
    _edit_file(sink.layout.lds_path, edit)
    after = json.loads(sink.layout.lds_path.read_text())
    logs = [chain["filters"][0]["typed_config"]["access_log"]
            for r in (before, after) for chain in r["resources"][0]["filter_chains"]]
    return logs[0], logs[1]


def test_timing_logger_edits_touch_only_the_adaptive_logger(tmp_path: Path) -> None:
    for name in ("cel-filter", "no-timing-filter", "one-tag"):
        before, after = _rendered_logs(tmp_path, name)
        changed = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
        assert len(changed) == 1, name
        assert before[changed[0]]["typed_config"]["counters"][0]["stat"]["name"] == "adaptive_answers", name


def test_the_cel_arm_is_the_former_logger(tmp_path: Path) -> None:
    before, after = _rendered_logs(tmp_path, "cel-filter")
    [timing] = [log for log in after if "extension_filter" in log.get("filter", {})]
    assert timing["filter"]["extension_filter"]["typed_config"]["expression"] == CEL_FILTER
    assert all(t["name"] != BODY_TAG for c in timing["typed_config"]["counters"] for t in c["stat"]["tags"])
    assert not any("extension_filter" in log.get("filter", {}) for log in before)  # the default has none
