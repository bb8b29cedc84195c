"""Prometheus metrics. Labels carry service names and reasons, never credentials."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

DISCOVERY_CALLS = Counter(
    "modelarts_agent_discovery_calls_total", "ModelArts discovery polls by service and result.",
    ["service", "result"], registry=REGISTRY,
)
DISCOVERY_LATENCY = Histogram(
    "modelarts_agent_discovery_duration_seconds", "Latency of one discovery poll, budget wait excluded.",
    ["service"], registry=REGISTRY, buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
ENDPOINTS_REJECTED = Counter(
    "modelarts_agent_endpoints_rejected_total", "Endpoint entries dropped by validation, by reason.",
    ["service", "reason"], registry=REGISTRY,
)
ENDPOINTS = Gauge(
    "modelarts_agent_endpoints", "Endpoints per service in the current snapshot.",
    ["service", "state"], registry=REGISTRY,
)
LAST_SUCCESS = Gauge(
    "modelarts_agent_last_successful_sync_timestamp_seconds", "Unix time of the last successful poll.",
    ["service"], registry=REGISTRY,
)
STALE = Gauge(
    "modelarts_agent_service_stale", "1 while a service is served from last-known-good data past the stale age.",
    ["service"], registry=REGISTRY,
)
RATE_LIMITED = Gauge(
    "modelarts_agent_service_rate_limited", "1 while the last poll of a service was throttled (HTTP 429).",
    ["service"], registry=REGISTRY,
)
BUDGET_USED = Gauge(
    "modelarts_agent_budget_calls_in_window", "ModelArts calls made in the current rate window, per identity.",
    ["identity"], registry=REGISTRY,
)
BUDGET_LIMIT = Gauge(
    "modelarts_agent_budget_limit_per_window", "Calls allowed per rate window, per identity.",
    ["identity"], registry=REGISTRY,
)
BUDGET_WAITS = Counter(
    "modelarts_agent_budget_waits_total", "Calls that had to wait for the rate budget.",
    ["identity"], registry=REGISTRY,
)
SNAPSHOT_VERSION = Gauge(
    "modelarts_agent_snapshot_version", "Version of the current endpoint snapshot.", registry=REGISTRY,
)
CONFIG_RELOADS = Counter(
    "modelarts_agent_config_reloads_total", "Config file reloads by result.", ["result"], registry=REGISTRY,
)
SINK_WRITES = Counter(
    "modelarts_agent_sink_writes_total", "Snapshot publications by sink and result.", ["sink", "result"],
    registry=REGISTRY,
)
