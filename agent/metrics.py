"""Prometheus metrics. Labels carry service names and reasons, never credentials."""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


# What the scrape-time collectors read, as protocols: metrics sits below every module that counts.
class _Usage(Protocol):
    @property
    def identity(self) -> str: ...
    @property
    def limit(self) -> int: ...
    @property
    def used_in_window(self) -> int: ...
    @property
    def waits_total(self) -> int: ...
    @property
    def calls_total(self) -> int: ...


class _Budget(Protocol):
    def usage(self) -> _Usage: ...


class BudgetSource(Protocol):
    """agent.modelarts.budget.BudgetRegistry."""

    def budgets(self) -> Iterable[_Budget]: ...


class PollerSource(Protocol):
    """A running agent (agent.app.run.AgentRuntime)."""

    def poller_states(self) -> list[tuple[str, bool]]: ...

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


class _BudgetCollector(Collector):
    """Reads every live rate budget at scrape time, so the figures are never stale."""

    def __init__(self) -> None:
        self.registries: weakref.WeakSet[BudgetSource] = weakref.WeakSet()

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        used = GaugeMetricFamily("modelarts_agent_budget_calls_in_window",
                                 "ModelArts calls made in the current rate window, per identity.", labels=["identity"])
        limit = GaugeMetricFamily("modelarts_agent_budget_limit_per_window",
                                  "Calls allowed per rate window, per identity.", labels=["identity"])
        left = GaugeMetricFamily("modelarts_agent_budget_tokens_left",
                                 "Calls still allowed in the current rate window, per identity.", labels=["identity"])
        waits = CounterMetricFamily("modelarts_agent_budget_waits",
                                    "Calls that had to wait for the rate budget.", labels=["identity"])
        calls = CounterMetricFamily("modelarts_agent_budget_calls",
                                    "ModelArts calls granted by the rate budget.", labels=["identity"])
        for registry in list(self.registries):
            for budget in registry.budgets():
                usage = budget.usage()
                used.add_metric([usage.identity], usage.used_in_window)
                limit.add_metric([usage.identity], usage.limit)
                left.add_metric([usage.identity], max(0, usage.limit - usage.used_in_window))
                waits.add_metric([usage.identity], usage.waits_total)
                calls.add_metric([usage.identity], usage.calls_total)
        yield from (used, limit, left, waits, calls)


BUDGETS = _BudgetCollector()
REGISTRY.register(BUDGETS)


class _PollerCollector(Collector):
    """modelarts_agent_poller_alive, read from the pollers' threads at scrape time."""

    def __init__(self) -> None:
        self.runtimes: weakref.WeakSet[PollerSource] = weakref.WeakSet()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        alive = GaugeMetricFamily("modelarts_agent_poller_alive",
                                  "1 while the ModelArts poller thread runs, 0 once it has died.", labels=["poller"])
        for runtime in list(self.runtimes):
            for name, is_alive in runtime.poller_states():
                alive.add_metric([name], 1 if is_alive else 0)
        yield alive


POLLERS = _PollerCollector()
REGISTRY.register(POLLERS)
