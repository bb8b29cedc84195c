"""The protocol-specific parts of the generated Envoy config, message by message (no Envoy here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from envoy.config.core.v3 import config_source_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2

from agent.config import parse_config
from agent.envoy.gateway import GatewayTarget, gateway_listener
from agent.envoy.serialize import to_dict
from agent.errors import ConfigError
from agent.model import Endpoint
from tests.envoy.harness import make_config
from tests.envoy.test_builders import cluster, hcm, render, route

GRPC = [Endpoint("10.0.0.1", 9000, "grpc"), Endpoint("10.0.0.2", 9000, "grpc")]


def test_grpc_services_are_health_checked_with_grpc_health_and_http_ones_with_get() -> None:
    res = render([{"name": "g", "health_check": {}}, {"name": "h", "health_check": {}},
                  {"name": "g-named", "health_check": {"grpc_service_name": "modelarts.emulator.v1.Inference"}},
                  {"name": "g-get", "health_check": {"type": "http", "path": "/ping"}}],
                 {"g": GRPC, "h": [Endpoint("10.0.0.3", 80)], "g-named": GRPC, "g-get": GRPC})
    assert cluster(res, "g")["health_checks"][0]["grpc_health_check"] == {}  # "" = the whole server
    assert cluster(res, "g-named")["health_checks"][0]["grpc_health_check"] == {
        "service_name": "modelarts.emulator.v1.Inference"}
    assert cluster(res, "h")["health_checks"][0]["http_health_check"] == {"path": "/health"}
    # Asked for explicitly, an HTTP GET check stays HTTP (over HTTP/2 for a gRPC cluster).
    assert cluster(res, "g-get")["health_checks"][0]["http_health_check"] == {"path": "/ping",
                                                                             "codec_client_type": "HTTP2"}


def test_idempotent_paths_open_retries_to_named_grpc_methods() -> None:
    res = render([{"name": "g", "listen_port": 8000, "retries": {"idempotent_paths": [
        "/pkg.Inference/Predict", "/pkg.Health/"]}}], {"g": GRPC})
    policy = route(res, "g")["retry_policy"]
    assert "unavailable" in policy["retry_on"].split(",") and "cancelled" in policy["retry_on"].split(",")
    matchers = policy["retriable_request_headers"]
    assert {"name": ":path", "string_match": {"exact": "/pkg.Inference/Predict"}} in matchers
    assert {"name": ":path", "string_match": {"prefix": "/pkg.Health/"}} in matchers
    assert {"name": ":method", "string_match": {"exact": "GET"}} in matchers  # the HTTP rules stay


@pytest.mark.parametrize("path", ["pkg.Inference/Predict", "/with space", ""])
def test_idempotent_paths_must_be_paths(path: str) -> None:
    with pytest.raises(ConfigError, match="idempotent_paths"):
        make_config_with_retries({"idempotent_paths": [path]})


def make_config_with_retries(retries: dict[str, Any]) -> Any:
    return parse_config({
        "modelarts": {"iam_url": "http://127.0.0.1:9", "modelarts_url": "http://127.0.0.1:9", "project_id": "p"},
        "auth": {"mode": "token"}, "services": [{"name": "g", "service_id": "sid", "retries": retries}]}, "test")


def _stats_loggers(access_logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The stream metrics' stats loggers (the adaptive loop's per-host timing logger left out)."""
    def adaptive(log: dict[str, Any]) -> bool:
        counters = log["typed_config"].get("counters") or [{}]
        return str(counters[0].get("stat", {}).get("name", "")).startswith("adaptive_")

    return [log for log in access_logs if log["name"] == "envoy.access_loggers.stats" and not adaptive(log)]


def test_listeners_log_first_byte_duration_and_grpc_status() -> None:
    res = render([{"name": "g", "listen_port": 8000, "access_log": {"enabled": True}}], {"g": GRPC})
    logs = hcm(res, "g")["access_log"]
    fields = logs[0]["typed_config"]["log_format"]["json_format"]
    assert fields["grpc_status"] == "%GRPC_STATUS_NUMBER%"
    assert fields["first_byte_ms"] == "%COMMON_DURATION(DS_RX_BEG:US_RX_BODY_BEG:ms)%"
    timings, statuses = _stats_loggers(logs)
    assert [h["stat"]["name"] for h in timings["typed_config"]["histograms"]] == ["first_byte_ms", "duration_ms"]
    assert statuses["filter"]["header_filter"]["header"] == {
        "name": "content-type", "string_match": {"prefix": "application/grpc"}}
    # The file access log is off by default (agent/config.py AccessLog); the metrics stay.
    quiet = render([{"name": "g", "listen_port": 8000}], {"g": GRPC})
    # (plus the adaptive loop's timing logger: gRPC least_request is adaptive by default)
    assert len(_stats_loggers(hcm(quiet, "g")["access_log"])) == 2 == len(hcm(quiet, "g")["access_log"]) - 1


def test_gateway_metrics_are_labelled_by_route_that_is_by_service() -> None:
    config = make_config(Path("/tmp/x"), 9901, [{"name": "llm"}])
    ads = config_source_pb2.ConfigSource(ads=config_source_pb2.AggregatedConfigSource())
    listener = gateway_listener(config.gateway, [GatewayTarget("llm", "llm", config.services[0])], ads)
    manager = http_connection_manager_pb2.HttpConnectionManager()
    assert listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    timings, _ = _stats_loggers(to_dict(manager)["access_log"])
    assert timings["typed_config"]["histograms"][0]["stat"]["tags"] == [{"name": "service",
                                                                         "value_format": "%ROUTE_NAME%"}]
