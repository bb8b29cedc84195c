"""The arms of the data-plane benchmark: direct, the hand-written minimal Envoy, and the agent's generated
sidecar config with every default feature on, or with one feature switched off (the cost table).

A variant is the generated config with either a service-policy override (what a user can write in the
agent config) or, for a feature without an off switch in the config, an edit of the rendered files
before Envoy starts. The adaptive loop is the agent's own `AdaptiveRunner`, run in this process against
the arm's Envoy only while that arm is measured (so it never loads another arm's core).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.adaptive.runner import AdaptiveRunner
from agent.config import AgentConfig
from agent.envoy.access_log import STATS_LOGGER
from agent.sinks.envoy.files import EnvoyFileSink
from bench.env import ENVOY_CPU, LOADGEN_CPU
from bench.minimal_envoy import MinimalEnvoy
from bench.scenarios import Ctx, Envoy, agent_config, free_port, snapshot

Edit = Callable[[dict[str, Any]], None]  # changes one rendered resource (a Cluster or a Listener) in place


def _drop_cluster_key(key: str) -> Edit:
    def edit(cluster: dict[str, Any]) -> None:
        cluster.pop(key, None)
    return edit


def _stream_stats(log: dict[str, Any]) -> bool:
    """The first-byte / duration / gRPC-status loggers; not the adaptive loop's own (`adaptive_*` counters)."""
    counters = log.get("typed_config", {}).get("counters") or [{}]
    adaptive = str(counters[0].get("stat", {}).get("name", "")).startswith("adaptive_")
    return log.get("name") == STATS_LOGGER and not adaptive


def _drop_stats_loggers(listener: dict[str, Any]) -> None:
    for chain in listener.get("filter_chains", []):
        for network_filter in chain.get("filters", []):
            config = network_filter.get("typed_config", {})
            config["access_log"] = [a for a in config.get("access_log", []) if not _stream_stats(a)]


@dataclass(frozen=True)
class Variant:
    """The generated config, changed in one way (or not at all: `generated`)."""

    name: str
    label: str  # the cost-table row
    policy: Mapping[str, Any] = field(default_factory=dict)  # service-policy overrides, as in the agent config
    cluster_edit: Edit | None = None
    listener_edit: Edit | None = None
    switched_on: bool = False  # an opt-in feature: the row is the cost of turning it on


GENERATED = Variant("generated", "every default on")
VARIANTS: tuple[Variant, ...] = (
    Variant("access-log", "JSON access log (off by default: cost of turning it on)", {"access_log": {"enabled": True}},
            switched_on=True),
    Variant("no-stream-stats", "stats access logger (first-byte / duration histograms)",
            listener_edit=_drop_stats_loggers),
    Variant("no-endpoint-stats", "per-endpoint stats", cluster_edit=_drop_cluster_key("track_cluster_stats")),
    Variant("no-retries", "retry policy (+ retry budget)", {"retries": {"enabled": False}}),
    Variant("no-outlier", "outlier detection", {"outlier_detection": {"enabled": False}}),
    Variant("no-breakers", "circuit breakers (Envoy's defaults instead)",
            cluster_edit=_drop_cluster_key("circuit_breakers")),
    Variant("no-adaptive", "adaptive loop (lb.adaptive: /clusters reads, its timing access logger)",
            {"lb": {"adaptive": False}}),
    Variant("health-check", "active health check (off by default: cost of turning it on)",
            {"health_check": {"type": "http", "path": "/health"}}, switched_on=True),
)


@contextlib.contextmanager
def on_cpus(cpus: set[int]) -> Iterator[None]:
    """The calling thread on `cpus` for the block (threads it starts keep them), then back as it was."""
    before = os.sched_getaffinity(0)
    if not cpus <= before or cpus == before:
        yield  # not ours to use (or already so): leave it to the scheduler
        return
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


# The adaptive loop's thread: on the load generator's core, never on Envoy's. Unpinned (before issue 18's fix),
# the scheduler was free to run its Python (~0.5-0.9 ms of CPU per step, 20 steps a second) on core 1 beside
# Envoy's one worker. The agent is not Envoy: on this layout core 1 is Envoy's alone and everything else shares
# core 0, as in bench/dataplane_throughput.py, so whatever the loop's Python costs the latency shows up there.
LOOP_CPUS = {int(LOADGEN_CPU)}


class Arm:
    """Something vegeta can be pointed at, with the Envoy (if any) whose CPU time is read."""

    def __init__(self, name: str, url: str, pid: int | None = None,
                 runner: tuple[AdaptiveRunner, AgentConfig] | None = None, admin: str = "") -> None:
        self.name = name
        self.url = url
        self.pid = pid
        self.admin = admin  # the Envoy's admin URL ("" for direct)
        self._runner = runner

    def __enter__(self) -> Arm:
        if self._runner is not None:
            runner, config = self._runner
            with on_cpus(LOOP_CPUS):
                runner.apply(config)  # starts the feedback loop (its thread) against this arm's Envoy
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            self._runner[0].stop()


def minimal_arm(ctx: Ctx, name: str, upstream: tuple[str, int], concurrency: int = 1,
                cpu: str | None = ENVOY_CPU) -> Arm:
    port = free_port()
    envoy = ctx.track(MinimalEnvoy(ctx.workdir, name, port, free_port(), upstream[0], upstream[1],
                                   concurrency=concurrency, cpu=cpu)).start()
    return Arm(name, f"http://127.0.0.1:{port}/v1/infer", envoy.pid)


def _edit_file(path: Path, edit: Edit) -> None:
    data = json.loads(path.read_text())
    for resource in data.get("resources", []):
        edit(resource)
    path.write_text(json.dumps(data, indent=1))


def generated_arm(ctx: Ctx, variant: Variant, upstream: tuple[str, int], concurrency: int = 1,
                  cpu: str | None = ENVOY_CPU, name: str | None = None) -> Arm:
    """The agent's EnvoyFileSink renders the config; Envoy starts on those files, as in the sidecar."""
    name = name or variant.name
    port = free_port()
    config = agent_config(ctx.workdir / f"{name}-files", free_port(),
                          [{"name": "llm", "listen_port": port, **variant.policy}])
    sink = EnvoyFileSink(config)
    sink.publish(snapshot(config, {"llm": [upstream]}))
    if variant.cluster_edit is not None:
        _edit_file(sink.layout.cds_path, variant.cluster_edit)
    if variant.listener_edit is not None:
        _edit_file(sink.layout.lds_path, variant.listener_edit)
    envoy = ctx.track(Envoy(config, ctx.workdir, name=f"envoy-{name}", concurrency=concurrency, cpu=cpu)).start()
    envoy.wait_for_hosts("llm", [f"{upstream[0]}:{upstream[1]}"])
    runner = None
    if config.services[0].adaptive_lb:
        runner = (AdaptiveRunner(lambda: [sink]), config)
    return Arm(name, f"http://127.0.0.1:{port}/v1/infer", envoy.pid, runner, envoy.admin_url(""))
