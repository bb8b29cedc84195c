"""Reading Envoy's /clusters JSON and turning cumulative counters into per-read samples."""

from __future__ import annotations

import http.server
import json
import threading
from typing import Any
from urllib.parse import parse_qs, urlsplit

from agent.adaptive.envoy_admin import AdminReader, HostCounters, parse_clusters, parse_timing
from agent.adaptive.sampling import DeltaTracker, HostSample


def host(ip: str, port: int, total: int, active: int, success: int, error: int = 0) -> dict[str, Any]:
    # The shape Envoy 1.40 answers (only the fields we read; counters and gauges mixed in `stats`).
    return {"address": {"socket_address": {"address": ip, "port_value": port}},
            "stats": [{"name": "cx_active", "type": "GAUGE", "value": "1"},
                      {"name": "rq_total", "value": str(total)},
                      {"name": "rq_active", "type": "GAUGE", "value": active},
                      {"name": "rq_success", "value": str(success)}, {"name": "rq_error", "value": str(error)}],
            "health_status": {"eds_health_status": "HEALTHY"}, "weight": 1}


def clusters(*entries: tuple[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return {"cluster_statuses": [{"name": name, "host_statuses": hosts} for name, hosts in entries]}


def test_parse_keeps_wanted_clusters_and_reads_counters() -> None:
    data = clusters(("llm", [host("10.0.0.1", 80, 10, 2, 7, 1), host("fd00::1", 8080, 3, 0, 3)]),
                    ("other", [host("10.0.0.9", 80, 1, 0, 1)]))
    parsed = parse_clusters(data, ["llm"])
    assert set(parsed) == {"llm"}
    assert parsed["llm"]["10.0.0.1:80"] == HostCounters(rq_total=10, rq_active=2, rq_success=7, rq_error=1)
    assert "[fd00::1]:8080" in parsed["llm"]  # the same form as Endpoint.address


def test_parse_tolerates_junk() -> None:
    assert parse_clusters(None) == {}
    assert parse_clusters({"cluster_statuses": [{"name": "x", "host_statuses": [{"address": {}}]}]}) == {"x": {}}


def test_deltas_per_envoy_are_summed_and_resets_are_not_negative() -> None:
    tracker = DeltaTracker()
    a0 = {"llm": {"h:1": HostCounters(100, 1, 90, 5)}}
    b0 = {"llm": {"h:1": HostCounters(50, 2, 50, 0)}}
    first = tracker.update({"http://a": a0, "http://b": b0})
    assert first["llm"]["h:1"] == HostSample(sent=0, succeeded=0, failed=0, active=3)  # baseline only
    a1 = {"llm": {"h:1": HostCounters(110, 0, 99, 6)}}
    b1 = {"llm": {"h:1": HostCounters(4, 1, 4, 0)}}  # Envoy b restarted: counters went back
    second = tracker.update({"http://a": a1, "http://b": b1})
    assert second["llm"]["h:1"] == HostSample(sent=10, succeeded=9, failed=1, active=1)
    third = tracker.update({"http://a": a1})  # b did not answer: a's part only
    assert third["llm"]["h:1"] == HostSample(sent=0, succeeded=0, failed=0, active=0)


class _FakeAdmin(http.server.BaseHTTPRequestHandler):
    """An Envoy admin that answers the loop's two reads and records the paths it was asked for."""

    paths: list[str] = []
    answers = {"/clusters": clusters(("llm", [host("10.0.0.1", 80, 5, 0, 5)])),
               "/stats": {"stats": [{"name": "modelarts.adaptive_answers.body.0.cluster.llm.instance.10.0.0.1:80",
                                     "value": 5},
                                    {"name": "modelarts.adaptive_ttfb_us.cluster.llm.instance.10.0.0.1:80",
                                     "value": 5000}]}}

    def do_GET(self) -> None:
        self.paths.append(self.path)
        body = json.dumps(self.answers[urlsplit(self.path).path]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_the_timing_read_asks_envoy_for_used_counters_only() -> None:
    # Issue 18: these reads run on Envoy's main thread 20 times a second; without `type=Counters` Envoy
    # also walks every gauge and histogram against the filter, and without `usedonly` it matches the regex
    # against every counter never incremented, for the same answer.
    _FakeAdmin.paths = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeAdmin)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    reader = AdminReader([f"http://127.0.0.1:{server.server_address[1]}"])
    try:
        answer = reader.read(["llm"])
    finally:
        reader.close()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    counters = next(iter(answer.values()))["llm"]["10.0.0.1:80"]
    assert (counters.timed, counters.timed_us) == (5, 5000)
    stats = [parse_qs(urlsplit(path).query, keep_blank_values=True) for path in _FakeAdmin.paths
             if urlsplit(path).path == "/stats"]
    assert len(stats) == 1 and stats[0].get("type") == ["Counters"] and "usedonly" in stats[0], _FakeAdmin.paths


def _stat(name: str, value: int) -> dict[str, Any]:
    return {"name": f"modelarts.adaptive_{name}", "value": value}


def test_timing_counts_only_answers_with_a_body() -> None:
    """The answers counter's `body` tag is "0" for answers with a first body byte and empty for the others
    (a HEAD, a stream left before its first token): only the first pair up with the time sum."""
    data = {"stats": [_stat("answers.body.0.cluster.llm.instance.10.0.0.1:80", 7),
                      _stat("answers.body..cluster.llm.instance.10.0.0.1:80", 3),
                      _stat("ttfb_us.cluster.llm.instance.10.0.0.1:80", 7000),
                      _stat("answers.body..cluster.llm.instance.10.0.0.2:80", 4)]}
    assert parse_timing(data) == {"llm": {"10.0.0.1:80": {"timed": 7, "timed_us": 7000}}}


def test_timing_names_from_an_older_config_still_read() -> None:
    # An Envoy still on the previous config (a CEL filter, no `body` tag) during an agent upgrade.
    data = {"stats": [_stat("answers.cluster.llm.instance.[fd00::1]:8080", 2),
                      _stat("ttfb_us.cluster.llm.instance.[fd00::1]:8080", 900)]}
    assert parse_timing(data) == {"llm": {"[fd00::1]:8080": {"timed": 2, "timed_us": 900}}}
