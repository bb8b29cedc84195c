"""Prometheus metrics of the adaptive load balancer, on the agent's registry."""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge

from agent.adaptive.health import STATES
from agent.metrics import REGISTRY

ENDPOINT_WEIGHT = Gauge(
    "modelarts_agent_endpoint_weight", "Adaptive load_balancing_weight published for an endpoint.",
    ["service", "endpoint"], registry=REGISTRY,
)
ENDPOINT_LATENCY = Gauge(
    "modelarts_agent_endpoint_latency_seconds",
    "Estimated time a request spends at an endpoint (Little's law on Envoy's counters).",
    ["service", "endpoint"], registry=REGISTRY,
)
WEIGHT_UPDATES = Counter(
    "modelarts_agent_adaptive_weight_updates_total", "Adaptive weight sets published, by service.",
    ["service"], registry=REGISTRY,
)
ADMIN_READS = Counter(
    "modelarts_agent_adaptive_admin_reads_total", "Reads of Envoy's admin /clusters by the feedback loop.",
    ["result"], registry=REGISTRY,
)

LOOP_STATE = Gauge(
    "modelarts_agent_adaptive_loop_state",
    "1 for the feedback loop's current state (starting, ok, stale, blind, latched), 0 for the others.",
    ["state"], registry=REGISTRY,
)
for _state in STATES:  # every state is a series from the start (0 until it is the current one)
    LOOP_STATE.labels(_state)


def forget(service: str, endpoint: str) -> None:
    for gauge in (ENDPOINT_WEIGHT, ENDPOINT_LATENCY):
        with contextlib.suppress(KeyError):
            gauge.remove(service, endpoint)
