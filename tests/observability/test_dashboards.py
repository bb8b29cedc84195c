"""Every metric (and selector label) a dashboard panel or an alert uses exists in real output.

The agent side is scraped from a running agent (its registry also carries the xDS server's and
the controller's metrics); the Envoy side from a real Envoy that has served traffic.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml
from modelarts_emulator import Emulator, EmulatorConfig, ServiceConfig
from prometheus_client.parser import text_string_to_metric_families

import agent.kube.metrics
import agent.sinks.xds.metrics
from agent.app.run import AgentRuntime
from agent.model import Endpoint
from agent.sinks.envoy.files import EnvoyFileSink
from tests.envoy.conftest import StartEnvoy
from tests.envoy.harness import HttpInstance, free_port, make_config, make_snapshot, send_requests, wait_until
from tests.integration.conftest import agent_config
from tests.protocols.clients import GrpcClient, grpc_stream

FILES = Path(__file__).resolve().parents[2] / "helm" / "modelarts-agent" / "files"
METRIC = re.compile(r"\b((?:envoy|modelarts_agent)_[a-z0-9_]+)\b(\{[^}]*\})?")
LABEL = re.compile(r"([a-z_]+)\s*(?:=~|!=|!~|=)")
GROUPING = re.compile(r"\b(?:by|without)\s*\([^)]*\)")


def expressions() -> Iterator[tuple[str, str]]:
    dashboard = json.loads((FILES / "grafana-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            yield f"panel {panel['title']!r}", target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            yield f"variable {variable['name']}", variable["query"]
    rules = yaml.safe_load((FILES / "prometheus-rules.yaml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            yield f"alert {rule['alert']}", rule["expr"]


def scrape(text: str) -> dict[str, set[str]]:
    """metric/sample name -> label names seen (HELP-only families count, with no labels)."""
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        found.setdefault(family.name, set())
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
            found[family.name].update(sample.labels)
    for line in text.splitlines():
        if line.startswith("# HELP "):
            found.setdefault(line.split()[2], set())
    return found


@pytest.fixture
def agent_metrics(emulator, monkeypatch: pytest.MonkeyPatch) -> dict[str, set[str]]:  # type: ignore[no-untyped-def]
    from agent.config import parse_config

    base = agent_config(emulator, "password")
    config = parse_config({**base.model_dump(mode="json"), "admin": {"port": 0}})
    runtime = AgentRuntime(config)
    runtime.start()
    try:
        assert wait_until(runtime.store.ready, 15)
        agent.kube.metrics.LEADER.set(0)
        return scrape(requests.get(runtime.admin.url + "/metrics", timeout=5).text)
    finally:
        runtime.stop()


@pytest.fixture
def envoy_metrics(tmp_path: Path, start_envoy: StartEnvoy) -> dict[str, set[str]]:
    port, grpc_port, admin = free_port(), free_port(), free_port()
    config = make_config(tmp_path / "envoy", admin, [{"name": "svc", "listen_port": port},
                                                     {"name": "g", "listen_port": grpc_port}])
    good, bad = HttpInstance("good"), HttpInstance("bad", status=503)
    # A gRPC instance too: the gRPC status metrics only exist once Envoy has proxied a gRPC call.
    emu = Emulator(EmulatorConfig(services=[ServiceConfig(name="g", schema="grpc")],
                                  instance_address_base="127.0.6.200")).start()
    try:
        [grpc_instance] = emu.admin.instances()
        EnvoyFileSink(config).publish(make_snapshot(config, {
            "svc": [Endpoint(good.ip, good.port), Endpoint(bad.ip, bad.port)],
            "g": [Endpoint(grpc_instance.ip, grpc_instance.port, "grpc")]}))
        envoy = start_envoy(config)
        assert wait_until(lambda: "good" in send_requests(port, 10, 2).answered, 10)
        send_requests(port, 40, 2)
        envoy.wait_for_hosts({"g": [grpc_instance.address]})
        with GrpcClient(f"127.0.0.1:{grpc_port}") as client:
            client.predict()
            grpc_stream(client)
        time.sleep(0.5)
        return scrape(requests.get(f"http://127.0.0.1:{envoy.admin_port}/stats/prometheus", timeout=5).text)
    finally:
        good.kill()
        bad.kill()
        emu.stop()


@pytest.mark.usefixtures("creds_env")
def test_every_dashboard_and_alert_metric_exists(agent_metrics: dict[str, set[str]],
                                                 envoy_metrics: dict[str, set[str]]) -> None:
    known = {**envoy_metrics, **agent_metrics}
    problems = []
    checked = 0
    for where, expr in expressions():
        # Grouping clauses name labels, not metrics; selectors are consumed together with their metric.
        for name, selector in METRIC.findall(GROUPING.sub("", expr)):
            checked += 1
            if name not in known:
                problems.append(f"{where}: metric {name} does not exist")
                continue
            for label in LABEL.findall(selector or ""):
                if label not in known[name]:
                    problems.append(f"{where}: {name} has no label {label!r} (has {sorted(known[name])})")
    assert checked >= 20
    assert problems == []


def test_dashboard_and_rules_are_well_formed() -> None:
    dashboard = json.loads((FILES / "grafana-dashboard.json").read_text())
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("per service", "per instance", "p50", "p99", "endpoints ready", "sync age", "budget",
                  "streaming", "first byte", "stream duration", "grpc"):
        assert topic in titles, topic
    rules = yaml.safe_load((FILES / "prometheus-rules.yaml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert alerts == {"ModelArtsServiceNoReadyEndpoints", "ModelArtsSyncStale", "ModelArtsRateLimited",
                      "ModelArtsXdsNacks", "ModelArtsControllerLeaderMissing", "ModelArtsAdaptiveLoopUnhealthy"}
