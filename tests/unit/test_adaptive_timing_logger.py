"""The adaptive loop's timing logger picks its answers without a CEL filter (issue 18: the CEL filter was
~1.6 µs of Envoy CPU per request, half the loop's per-request cost; locked run 15:14 UTC at b9f94f0), and
still counts only answers with a body: its answers counter carries a `body` tag the reader keys on."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from agent.envoy.access_log import BODY_TAG, HAS_BODY, adaptive_timing_logs


def _filters(node: Any) -> list[str]:
    """Every filter kind inside an AccessLogFilter (and/or filters unfolded)."""
    out = []
    for kind, value in node.items():
        if kind in ("and_filter", "or_filter"):
            for child in value["filters"]:
                out += _filters(child)
        else:
            out.append(kind)
    return out


def _logger() -> dict[str, Any]:
    [log] = adaptive_timing_logs()
    return json_format.MessageToDict(log, preserving_proto_field_name=True)


def test_no_cel_filter_only_builtin_status_bounds() -> None:
    log = _logger()
    assert _filters(log["filter"]) == ["status_code_filter", "status_code_filter"]
    bounds = sorted((f["status_code_filter"]["comparison"]["op"], f["status_code_filter"]["comparison"]["value"]
                     ["default_value"]) for f in log["filter"]["and_filter"]["filters"])
    assert bounds == [("GE", 200), ("LE", 299)]


def test_answers_carry_the_body_tag_and_the_time_sum_its_own_value() -> None:
    answers, ttfb = _logger()["typed_config"]["counters"]
    assert answers["stat"]["name"] == "adaptive_answers" and answers["value_fixed"] == "1"
    assert answers["stat"]["tags"][0] == {"name": BODY_TAG, "value_format": HAS_BODY}
    # The time sum needs no tag: Envoy skips the counter when there is no first body byte.
    assert ttfb["stat"]["name"] == "adaptive_ttfb_us" and [t["name"] for t in ttfb["stat"]["tags"]] == [
        "cluster", "instance"]
