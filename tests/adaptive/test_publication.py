"""Weights into EDS (files): only EDS changes, CDS and LDS stay byte for byte; config and status views."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from agent.cli.status_cmd import render
from agent.errors import ConfigError
from agent.model import Endpoint
from agent.sinks.envoy.files import EnvoyFileSink
from tests.envoy.harness import make_config, make_snapshot


def eds_weights(path: Path) -> dict[str, int | None]:
    data = json.loads(path.read_text())["resources"][0]
    out: dict[str, int | None] = {}
    for locality in data.get("endpoints", []):
        for lb in locality["lb_endpoints"]:
            sock = lb["endpoint"]["address"]["socket_address"]
            out[f"{sock['address']}:{sock['port_value']}"] = lb.get("load_balancing_weight")
    return out


def test_update_weights_rewrites_eds_only(tmp_path: Path) -> None:
    config = make_config(tmp_path / "envoy", 9901, [{"name": "llm", "listen_port": 10080,
                                                     "lb": {"policy": "least_request", "adaptive": True}}])
    sink = EnvoyFileSink(config)
    endpoints = [Endpoint("10.0.0.1", 80), Endpoint("10.0.0.2", 80)]
    sink.publish(make_snapshot(config, {"llm": endpoints}))
    cds, lds = sink.layout.cds_path.read_bytes(), sink.layout.lds_path.read_bytes()
    eds = sink.layout.eds_path("llm")
    assert eds_weights(eds) == {"10.0.0.1:80": None, "10.0.0.2:80": None}

    sink.update_weights({"llm": {"10.0.0.1:80": 1000, "10.0.0.2:80": 10}})
    assert eds_weights(eds) == {"10.0.0.1:80": 1000, "10.0.0.2:80": 10}
    assert sink.layout.cds_path.read_bytes() == cds and sink.layout.lds_path.read_bytes() == lds

    # A new endpoint discovered before the loop has measured it: presumed as good as the best.
    sink.publish(make_snapshot(config, {"llm": [*endpoints, Endpoint("10.0.0.3", 80)]}, version=2))
    assert eds_weights(eds) == {"10.0.0.1:80": 1000, "10.0.0.2:80": 10, "10.0.0.3:80": 1000}

    mtime = eds.stat().st_mtime_ns
    sink.update_weights({"llm": {"10.0.0.1:80": 1000, "10.0.0.2:80": 10}})  # same content: no rewrite
    assert eds.stat().st_mtime_ns == mtime

    sink.update_weights({})  # adaptive off: plain EDS again
    assert set(eds_weights(eds).values()) == {None}


def test_adaptive_needs_least_request(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="adaptive needs policy least_request"):
        make_config(tmp_path, 9901, [{"name": "x", "lb": {"policy": "round_robin", "adaptive": True}}])


@pytest.mark.parametrize("url", ["https://10.0.0.1:9901", "http://envoy:9901", "http://10.0.0.1", "10.0.0.1:9901"])
def test_admin_urls_must_be_http_ip_port(tmp_path: Path, url: str) -> None:
    from agent.config import parse_config

    with pytest.raises(ConfigError, match="envoy_admin_urls"):
        parse_config({"modelarts": {"iam_url": "http://a:1", "modelarts_url": "http://a:1", "project_id": "p"},
                      "auth": {"mode": "token"}, "adaptive": {"envoy_admin_urls": [url]}})


def test_status_shows_weights() -> None:
    status = {"snapshot_version": 3, "ready": True, "clock": 0, "budgets": [], "services": [{
        "name": "llm", "service_id": "s", "endpoint_count": 2, "synced": True, "weights": [
            {"address": "10.0.0.1:80", "weight": 1000, "latency_ms": 11.5, "rate": 75.0, "in_flight": 0.9},
            {"address": "10.0.0.2:80", "weight": 10, "latency_ms": 52.0, "rate": 0.5, "in_flight": 0.03}]}]}
    console = Console(record=True, width=160)
    console.print(render(status))
    text = console.export_text()
    assert "adaptive weights" in text and "10.0.0.2:80" in text and "52.0 ms" in text and "1.0%" in text
