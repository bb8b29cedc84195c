"""What every scenario shares: the result model, the run context, child-process bookkeeping, and a real
Envoy sidecar fed by the agent's own file sink.

A scenario module has `NAME`, `TITLE` and `run(ctx) -> ScenarioResult`. Each child process it starts is
registered with `ctx.track()`, so bench/run.py stops every one of them, whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Self

from rich.console import Console

from agent.config import AgentConfig, parse_config
from agent.envoy.bootstrap import build_bootstrap
from agent.envoy.serialize import to_yaml
from agent.model import Endpoint, ServiceSnapshot, Snapshot
from agent.sinks.envoy.files import EnvoyFileSink
from bench.env import ENVOY_CPU, envoy_binary, taskset_prefix
from demo.processes import ChildProcess

# --- results ------------------------------------------------------------------------------------------------


@dataclass
class Check:
    """One figure beside its target. passed: True (PASS), False (MISS), None (informational / pending)."""

    what: str
    value: str
    target: str
    passed: bool | None
    note: str = ""
    inconclusive: bool = False  # the machine was too noisy for this figure to decide anything

    @property
    def status(self) -> str:
        if self.inconclusive:
            return "INCONCLUSIVE"
        return {True: "PASS", False: "MISS", None: "info"}[self.passed]


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    note: str = ""


@dataclass
class ScenarioResult:
    name: str
    title: str
    checks: list[Check] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)  # file names in docs/img
    notes: list[str] = field(default_factory=list)  # method, instance server, caveats (markdown)
    raw: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: str = ""
    pending: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScenarioResult:
        data = dict(data)
        data["checks"] = [Check(**c) for c in data.get("checks", [])]
        data["tables"] = [Table(**t) for t in data.get("tables", [])]
        return cls(**data)


def fmt_ms(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if value >= 100:
        return f"{value:,.0f} ms"
    if value >= 10:
        return f"{value:.1f} ms"
    return f"{value:.2f} ms"


# --- context ------------------------------------------------------------------------------------------------


class Ctx:
    """What a scenario gets: a work dir, quick mode, progress reporting, and child-process tracking."""

    def __init__(self, workdir: Path, img_dir: Path, quick: bool, console: Console,
                 on_step: Callable[[str], None] | None = None) -> None:
        self.workdir = workdir
        self.img_dir = img_dir
        self.quick = quick
        self.console = console
        self._on_step = on_step
        self._children: list[ChildProcess | Any] = []
        self._lock = threading.Lock()

    def step(self, text: str) -> None:
        if self._on_step is not None:
            self._on_step(text)

    def log(self, text: str) -> None:
        self.console.log(text)

    def track(self, child: Any) -> Any:
        """Register anything with stop() (ChildProcess, Upstream, Envoy, ...); stopped by stop_all()."""
        with self._lock:
            self._children.append(child)
        return child

    def stop_all(self) -> None:
        with self._lock:
            children, self._children = list(reversed(self._children)), []
        for child in children:
            with contextlib.suppress(Exception):
                child.stop()

    stop = stop_all  # a Ctx can be tracked by another Ctx


# --- small helpers ------------------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> float:
    """Poll until check() is true; returns the seconds it took. Raises after `timeout`."""
    start = time.monotonic()
    while True:
        with contextlib.suppress(Exception):
            if check():
                return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"{what} did not happen within {timeout:.0f}s")
        time.sleep(interval)


def http_json(url: str, timeout: float = 2.0) -> Any:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
    with opener.open(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def http_text(url: str, timeout: float = 2.0) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as resp:
        return str(resp.read().decode("utf-8", "replace"))


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process from /proc (children not included)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def proc_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- agent config and snapshots for a sidecar fed directly through the file sink -----------------------------


def agent_config(output_dir: Path, envoy_admin_port: int, services: Iterable[Mapping[str, Any]],
                 **extra: Any) -> AgentConfig:
    """An AgentConfig whose ModelArts part is a placeholder: the data-plane scenarios publish snapshots
    straight into `EnvoyFileSink`, exactly what the agent does after a poll."""
    return parse_config({
        "modelarts": {"iam_url": "http://127.0.0.1:9", "modelarts_url": "http://127.0.0.1:9", "project_id": "p"},
        "auth": {"mode": "token"},
        "discovery": {"allowed_cidrs": ["127.0.0.0/8"]},
        "services": [{"service_id": f"sid-{s['name']}", **s} for s in services],
        "envoy": {"output_dir": str(output_dir), "admin_port": envoy_admin_port},
        **extra,
    }, "bench")


def snapshot(config: AgentConfig, endpoints: Mapping[str, Sequence[tuple[str, int]]], version: int = 1) -> Snapshot:
    services = {
        spec.name: ServiceSnapshot(spec.name, spec.service_id, synced=True, endpoints=tuple(sorted(
            Endpoint(ip=ip, port=port) for ip, port in endpoints.get(spec.name, ()))))
        for spec in config.services
    }
    return Snapshot(version=version, services=MappingProxyType(dict(sorted(services.items()))))


class EnvoyProcess:
    """One Envoy child run from a config file, with the flags the agent's sidecar uses."""

    def __init__(self, config_path: Path, admin_port: int, workdir: Path, name: str, concurrency: int = 1,
                 cpu: str | None = ENVOY_CPU) -> None:
        self.admin_port = admin_port
        self.config_path = config_path
        argv = [*(taskset_prefix(cpu) if cpu else []), envoy_binary(), "-c", str(config_path),
                "--disable-hot-restart", "--concurrency", str(concurrency), "--log-level", "warn",
                "--drain-time-s", "1"]
        self.child = ChildProcess(name, argv, workdir)

    def start(self) -> Self:
        self.child.start()
        self.child.wait_until(lambda: http_text(self.admin_url("/ready"), 0.5).strip() == "LIVE", 30, "Envoy ready")
        return self

    def stop(self) -> None:
        self.child.stop()

    @property
    def pid(self) -> int:
        assert self.child.proc is not None
        return self.child.proc.pid

    def admin_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.admin_port}{path}"


class Envoy(EnvoyProcess):
    def __init__(self, config: AgentConfig, workdir: Path, name: str = "envoy", concurrency: int = 1,
                 cpu: str | None = ENVOY_CPU) -> None:
        self.config = config
        self.bootstrap = workdir / f"{name}-bootstrap.yaml"
        self.bootstrap.write_text(to_yaml(build_bootstrap(config.envoy)))
        super().__init__(self.bootstrap, config.envoy.admin_port, workdir, name, concurrency, cpu)

    def hosts(self, cluster: str) -> dict[str, dict[str, Any]]:
        """address -> health status for one cluster."""
        data = http_json(self.admin_url("/clusters?format=json"))
        found: dict[str, dict[str, Any]] = {}
        for entry in data.get("cluster_statuses", []):
            if entry.get("name") != cluster:
                continue
            for host in entry.get("host_statuses", []):
                sock = host["address"]["socket_address"]
                found[f"{sock['address']}:{sock['port_value']}"] = host.get("health_status", {})
        return found

    def wait_for_hosts(self, cluster: str, addresses: Iterable[str], timeout: float = 15.0) -> None:
        want = set(addresses)
        wait_for(lambda: set(self.hosts(cluster)) == want, timeout, f"Envoy cluster {cluster} = {sorted(want)}")

    def stats(self, prefix: str) -> dict[str, int]:
        text = http_text(self.admin_url(f"/stats?filter={prefix}"))
        out: dict[str, int] = {}
        for line in text.splitlines():
            name, _, value = line.partition(": ")
            with contextlib.suppress(ValueError):
                out[name] = int(value)
        return out


def sidecar(ctx: Ctx, services: Sequence[Mapping[str, Any]], endpoints: Mapping[str, Sequence[tuple[str, int]]],
            name: str = "envoy") -> tuple[Envoy, EnvoyFileSink, AgentConfig]:
    """Render `services` through the agent's EnvoyFileSink, start Envoy on the files, wait for the hosts."""
    out = ctx.workdir / f"{name}-files"
    config = agent_config(out, free_port(), services)
    sink = EnvoyFileSink(config)
    sink.publish(snapshot(config, endpoints))
    envoy = ctx.track(Envoy(config, ctx.workdir, name=name)).start()
    for spec in config.services:
        envoy.wait_for_hosts(spec.name, [f"{ip}:{port}" for ip, port in endpoints.get(spec.name, ())])
    return envoy, sink, config


# --- the emulator and the real agent as child processes ---------------------------------------------------


def start_emulator(ctx: Ctx, scenario: Mapping[str, Any],
                   name: str = "emulator") -> tuple[ChildProcess, dict[str, Any]]:
    """`modelarts-emulator` as a child process; returns it and its ready JSON (URLs, services)."""
    import sys

    import yaml

    path = ctx.workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(dict(scenario)))
    ready = ctx.workdir / f"{name}.json"
    ready.unlink(missing_ok=True)
    child = ctx.track(ChildProcess(name, [sys.executable, "-m", "modelarts_emulator", "--log-format", "text",
                                          "--config", str(path), "--ready-file", str(ready)], ctx.workdir))
    child.start()
    child.wait_until(ready.exists, 60, "emulator ready")
    return child, json.loads(ready.read_text())


def start_agent(ctx: Ctx, config: Mapping[str, Any], name: str = "agent", password: str = "",
                wait_ready: bool = True, cpu: str | None = None) -> ChildProcess:
    """The real `modelarts-agent run --config` process."""
    import sys

    import yaml

    path = ctx.workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(dict(config)))
    env = {"MODELARTS_PASSWORD": password} if password else {}
    argv = [*(taskset_prefix(cpu) if cpu else []), sys.executable, "-m", "agent", "run", "--config", str(path)]
    child = ChildProcess(name, argv, ctx.workdir, env)
    ctx.track(child)
    child.start()
    if wait_ready:
        port = config["admin"]["port"]
        child.wait_until(lambda: http_text(f"http://127.0.0.1:{port}/readyz", 1).startswith("ready"), 90,
                         f"{name}'s first sync")
    return child
