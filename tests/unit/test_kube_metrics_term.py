"""Metrics belong to the leadership term that wrote them: a former leader exports no per-service gauges.

In the chart's HA setup every replica is scraped. If the replica that stepped down kept exporting
its last `modelarts_agent_endpoints{state="ready"}` (say 3), `max by (service)` in the
"no ready endpoints" alert would read 3 while the new leader reports 0, and the alert stays silent.
"""

from __future__ import annotations

from kubernetes import client as k8s

from agent.config import ServiceSpec
from agent.controller.pipeline import Pipeline, PipelineSettings
from agent.errors import DiscoveryError
from agent.kube.client import EventRecorder, KubeClient
from agent.metrics import REGISTRY
from agent.model import Endpoint

NAME = "term--llm"
GAUGES = [("modelarts_agent_endpoints", {"service": NAME, "state": "ready"}),
          ("modelarts_agent_endpoints", {"service": NAME, "state": "total"}),
          ("modelarts_agent_last_successful_sync_timestamp_seconds", {"service": NAME}),
          ("modelarts_agent_service_stale", {"service": NAME}),
          ("modelarts_agent_service_rate_limited", {"service": NAME})]


def exported() -> dict[str, float | None]:
    return {f"{name}{labels}": REGISTRY.get_sample_value(name, labels) for name, labels in GAUGES}


def test_a_pipeline_that_stops_leading_takes_its_gauges_with_it() -> None:
    kube = KubeClient(k8s.ApiClient(k8s.Configuration(host="http://127.0.0.1:9")))  # never reached
    pipeline = Pipeline(kube, PipelineSettings(), lambda: True, EventRecorder(kube, "test", "me"))
    try:
        pipeline.store.set_specs([ServiceSpec(name=NAME, service_id="sid")])
        pipeline.store.record_endpoints(NAME, (Endpoint("192.168.205.1", 80), Endpoint("192.168.205.2", 80)))
        pipeline.store.record_failure(NAME, DiscoveryError("slow down", kind="throttled"))
        before = exported()
        assert before[f"modelarts_agent_endpoints{GAUGES[0][1]}"] == 2
        assert all(value is not None for value in before.values()), before
        pipeline.close(timeout=1)  # what _stopped_leading does
        assert all(value is None for value in exported().values()), exported()
        # A poller still finishing its last call after the step-down writes nothing either.
        pipeline.store.record_endpoints(NAME, (Endpoint("192.168.205.3", 80),))
        pipeline.store.record_failure(NAME, DiscoveryError("boom", kind="server_error"))
        assert all(value is None for value in exported().values()), exported()
    finally:
        kube.close()


def test_a_service_removed_from_the_config_leaves_no_gauges() -> None:
    kube = KubeClient(k8s.ApiClient(k8s.Configuration(host="http://127.0.0.1:9")))
    pipeline = Pipeline(kube, PipelineSettings(), lambda: True, EventRecorder(kube, "test", "me"))
    try:
        pipeline.store.set_specs([ServiceSpec(name=NAME, service_id="sid")])
        pipeline.store.record_endpoints(NAME, (Endpoint("192.168.205.1", 80),))
        pipeline.store.record_failure(NAME, DiscoveryError("slow down", kind="throttled"))
        pipeline.store.set_specs([])
        assert all(value is None for value in exported().values()), exported()
    finally:
        pipeline.close(timeout=1)
        kube.close()
