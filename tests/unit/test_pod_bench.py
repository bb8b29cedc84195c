"""The pod-cost benchmark's readers (apiserver metrics, audit log, emulator call times) and its verdicts."""

from __future__ import annotations

import json
from pathlib import Path

from bench import kube_bench as kb
from bench import pod_report
from bench.controller_scale import busiest_minute
from bench.sidecar_cost import importtime_summary

METRICS = """# HELP apiserver_longrunning_requests [STABLE] Gauge of all active long-running apiserver requests
# TYPE apiserver_longrunning_requests gauge
apiserver_longrunning_requests{group="discovery.k8s.io",resource="endpointslices",scope="namespace",verb="WATCH"} 10
apiserver_longrunning_requests{component="apiserver",group="",resource="secrets",verb="WATCH",version="v1"} 2
apiserver_request_total{code="200",component="apiserver",resource="endpointslices",verb="LIST"} 12
apiserver_request_total{code="200",component="apiserver",resource="endpointslices",verb="PUT"} 3
"""


def test_metrics_are_parsed_and_summed_by_label() -> None:
    samples = kb.parse_metrics(METRICS)
    assert kb.watch_count(samples, "endpointslices") == 10
    assert kb.metric_sum(samples, "apiserver_request_total", resource="endpointslices") == 15
    assert kb.metric_sum(samples, "apiserver_request_total", verb="PUT") == 3


def audit_event(audit_id: str, user: str, verb: str, resource: str, stamp: str, stage: str = "ResponseComplete",
                subresource: str | None = None) -> str:
    ref = {"resource": resource, "namespace": "ns", **({"subresource": subresource} if subresource else {})}
    return json.dumps({"auditID": audit_id, "stage": stage, "verb": verb, "user": {"username": user},
                       "objectRef": ref, "requestReceivedTimestamp": stamp, "responseStatus": {"code": 200}})


def test_audit_requests_are_counted_once_per_request_and_per_user(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    sa = "system:serviceaccount:ns:modelarts-sidecar"
    log.write_text("\n".join([
        audit_event("a", sa, "watch", "endpointslices", "2030-01-01T00:00:01.000000Z", stage="ResponseStarted"),
        audit_event("a", sa, "watch", "endpointslices", "2030-01-01T00:00:01.000000Z"),  # the same request again
        audit_event("b", sa, "list", "endpointslices", "2030-01-01T00:00:02.000000Z"),
        audit_event("c", "admin", "update", "endpointslices", "2030-01-01T00:00:03.000000Z"),
        audit_event("d", sa, "patch", "modelartsservices", "2030-01-01T00:00:04.000000Z", subresource="status"),
        audit_event("e", sa, "list", "endpointslices", "2030-01-01T00:02:00.000000Z"),  # after the window
        "not json",
    ]) + "\n")
    records = kb.read_audit(log)
    assert len(records) == 5
    start = records[0].received - 0.5
    counts = kb.count_requests(records, sa, start, start + 60)
    assert counts.by_verb == {"watch": 1, "list": 1, "patch": 1}
    assert counts.writes == 1 and counts.by_kind["patch modelartsservices/status"] == 1
    assert counts.per_minute(counts.total) == 3.0
    assert kb.count_requests(records, sa, start, start + 60, frozenset({"modelartsservices"})).writes == 0


def test_the_busiest_user_minute_is_a_sliding_window() -> None:
    # 20 calls in one window for "a" (spread over 59 s), and 25 for "b" that never fall within 60 s of each other.
    calls = {"a": [i * 3.0 for i in range(20)] + [200.0], "b": [i * 61.0 for i in range(25)]}
    assert busiest_minute(calls) == ("a", 20)
    assert busiest_minute({"c": [0.0, 59.9, 60.0]}) == ("c", 2)


def test_importtime_is_summed_per_top_level_package() -> None:
    text = "\n".join(["import time: self [us] | cumulative | imported package",
                      "import time:      1000 |       1000 |   kubernetes.client",
                      "import time:       500 |       1500 | kubernetes",
                      "import time:      2000 |       2000 | agent.config",
                      "something else"])
    summary = importtime_summary(text)
    assert summary["total_ms"] == 3.5
    assert summary["modules_top"] == [["agent", 2.0], ["kubernetes", 1.5]]


def test_the_report_gives_every_target_a_verdict_and_every_miss_a_reason(tmp_path: Path) -> None:
    case = {"services": 1, "envoy_all_clusters_s": 1.4, "first_file_s": 1.3,
            "idle": {"rss_mib": 52.0, "memory": {"RssAnon": 38.0}}}
    fast = {**case, "services": 10, "envoy_all_clusters_s": 0.8, "idle": {"rss_mib": 39.0, "memory": {"RssAnon": 30.0}}}
    rows = pod_report.sidecar_checks({"cases": [case, fast]})
    verdicts = {row[0]: (row[3], row[4]) for row in rows}
    verdict, reason = verdicts["sidecar RSS, idle, 1 service(s)"]
    assert verdict == "**MISS**" and reason
    assert verdicts["sidecar RSS, idle, 10 service(s)"] == ("**PASS**", "")
    assert [v for k, v in verdicts.items() if k.startswith("start")] == [
        ("**MISS**", "interpreter start and imports come first (see the import-time breakdown)"), ("**PASS**", "")]
    controller = {"steady": {"apiserver_without_leases": {"writes_per_minute": 0.0, "by_kind": {}, "seconds": 150},
                             "objects_changed": {}},
                  "modelarts": {"busiest_user_max_per_60s": 21}}
    [writes, calls] = pod_report.controller_checks(controller)
    assert writes[3] == "**PASS**" and calls[3] == "**MISS**"


def test_the_doc_section_is_replaced_in_place(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Benchmarks\n\nintro\n\n{pod_report.ANCHOR}\n\nsoak text\n")
    results = tmp_path / "results"
    results.mkdir()
    pod_report.update_doc(doc, results)
    pod_report.update_doc(doc, results)
    text = doc.read_text()
    assert text.count(pod_report.BEGIN) == 1 and text.count(pod_report.END) == 1
    assert text.index(pod_report.END) < text.index(pod_report.ANCHOR) and text.endswith("soak text\n")


def test_start_phases_come_from_the_sidecars_json_log() -> None:
    from bench.sidecar_cost import start_phases

    def line(at: float, msg: str, **extra: object) -> str:
        stamp = f"2030-01-01T00:00:{at:06.3f}Z"
        return json.dumps({"ts": stamp, "level": "info", "msg": msg, **extra})

    started = kb._epoch("2030-01-01T00:00:10.000000Z")
    log = "\n".join([
        "import time: 12 | 12 | site",  # -X importtime lines and anything else that is not JSON are skipped
        line(10.600, "admin endpoint listening"),
        line(10.650, "endpoints changed", service="a"),
        line(10.700, "published snapshot", version=1),  # holds only a: not every Service yet
        line(10.750, "endpoints changed", service="a"),  # a second change of a is not a first list
        line(10.800, "endpoints changed", service="b"),
        line(10.900, "published snapshot", version=3),
    ])
    phases = start_phases(log, started, services=2)
    assert {k: round(v or 0, 3) for k, v in phases.items()} == {
        "admin_listening_s": 0.6, "first_service_listed_s": 0.65, "all_services_listed_s": 0.8,
        "all_published_s": 0.9}
