"""The soak run: the agent process, the emulator and a real Envoy under churn, faults and steady load.

`python -m tests.soak.run_soak --seconds 600` is `make soak`; the test suite runs a 2-minute version.
It samples the agent's RSS, open file descriptors and threads from /proc, and fails on growth past
a bound or on any failed idempotent (GET) request.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml
from modelarts_emulator import Emulator, EmulatorConfig
from modelarts_emulator.config import DEFAULT_DOMAIN, DEFAULT_PASSWORD, DEFAULT_PROJECT_ID, DEFAULT_USER

from tests.envoy.harness import EnvoyProcess, free_port, write_bootstrap

SERVICE_ID = "svc-soak"
INSTANCE_CIDRS = ["127.0.0.8/29", "127.0.0.16/28", "127.0.0.32/27", "127.0.0.64/26", "127.0.0.128/25",
                  "127.0.1.0/24", "127.0.2.0/23"]
FAULTS = [("5xx", {"status": 503}), ("malformed", {}), ("timeout", {"seconds": 3}), ("empty", {}),
          ("hostile_ips", {}), ("429", {"retry_after": 2})]


@dataclass
class Sample:
    at: float
    rss_kb: int
    fds: int
    threads: int


@dataclass
class SoakResult:
    seconds: float
    requests_ok: int = 0
    requests_failed: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    churn_events: int = 0
    faults_injected: int = 0

    def growth(self) -> tuple[int, int, int]:
        """(RSS kB, fds, threads): mean of the last quarter minus mean of the first quarter after warm-up."""
        usable = self.samples[len(self.samples) // 5:]
        if len(usable) < 4:
            return (0, 0, 0)
        quarter = max(1, len(usable) // 4)
        head, tail = usable[:quarter], usable[-quarter:]

        def mean(items: list[Sample], attr: str) -> float:
            return sum(getattr(s, attr) for s in items) / len(items)

        return (round(mean(tail, "rss_kb") - mean(head, "rss_kb")), round(mean(tail, "fds") - mean(head, "fds")),
                round(mean(tail, "threads") - mean(head, "threads")))


def proc_sample(pid: int, started: float) -> Sample:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return Sample(at=time.monotonic() - started, rss_kb=int(fields["VmRSS"].split()[0]),
                  fds=len(os.listdir(f"/proc/{pid}/fd")), threads=int(fields["Threads"].strip()))


def run_soak(seconds: float, workdir: Path, rate: float = 40.0, seed: int = 1,
             adaptive: bool | str = "auto") -> SoakResult:
    rng = random.Random(seed)
    result = SoakResult(seconds=seconds)
    emu_config = EmulatorConfig.model_validate({"services": [{"name": "soak", "service_id": SERVICE_ID,
                                                              "instances": 4}]})
    listen, envoy_admin, agent_admin = free_port(), free_port(), free_port()
    config_path = workdir / "agent.yaml"
    with Emulator(emu_config) as emu:
        config_path.write_text(yaml.safe_dump({
            "modelarts": {"iam_url": emu.iam_url, "modelarts_url": emu.modelarts_url,
                          "project_id": DEFAULT_PROJECT_ID, "timeout_seconds": 2},
            "auth": {"mode": "password", "domain": DEFAULT_DOMAIN, "user": DEFAULT_USER},
            # Only the emulator's instance range: the hostile-IPs fault includes 127.0.0.1 on an instance port.
            "discovery": {"allowed_cidrs": INSTANCE_CIDRS, "default_poll_interval_seconds": 1,
                          "stale_after_seconds": 30},
            "services": [{"name": "soak", "service_id": SERVICE_ID, "listen_port": listen,
                          "health_check": {"type": "http", "path": "/health", "interval_seconds": 1},
                          "lb": {"adaptive": adaptive},
                          # Every failed request can be explained afterwards (response flags, upstream).
                          "access_log": {"path": str(workdir / "access.log")}}],
            "envoy": {"output_dir": str(workdir / "envoy"), "admin_port": envoy_admin},
            "admin": {"port": agent_admin},
            # A short window keeps polls frequent: more churn per minute of soak.
            "budget": {"per_user_per_minute": 60},
        }))
        emu.admin.set_limits(per_user_per_minute=60)
        log = (workdir / "agent.log").open("wb")
        agent = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(config_path)], stdout=log,
                                 stderr=subprocess.STDOUT, env={**os.environ, "MODELARTS_PASSWORD": DEFAULT_PASSWORD})
        from agent.config import load_config

        envoy = EnvoyProcess(write_bootstrap(load_config(config_path), workdir / "bootstrap.yaml"), envoy_admin,
                             workdir)
        stop = threading.Event()
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    if requests.get(f"http://127.0.0.1:{agent_admin}/readyz", timeout=1).ok:
                        break
                except requests.RequestException:
                    pass
                time.sleep(0.2)
            envoy.start()
            loader = threading.Thread(target=_load, args=(listen, rate, stop, result), daemon=True)
            loader.start()
            started = time.monotonic()
            next_churn = started + 5
            while time.monotonic() - started < seconds:
                result.samples.append(proc_sample(agent.pid, started))
                if time.monotonic() >= next_churn:
                    _churn(emu, rng, result, _agent_in_sync(agent_admin, emu))
                    next_churn = time.monotonic() + rng.uniform(3, 6)
                time.sleep(1.0)
        finally:
            stop.set()
            time.sleep(0.5)
            envoy.stop()
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(15)
            except subprocess.TimeoutExpired:
                agent.kill()
            log.close()
    return result


def _agent_in_sync(agent_admin: int, emu: Emulator) -> bool:
    """Whether the agent's endpoints are exactly the instances ModelArts lists right now."""
    try:
        status = requests.get(f"http://127.0.0.1:{agent_admin}/status", timeout=2).json()
    except (requests.RequestException, ValueError):
        return False
    known = {address for svc in status.get("services", []) for address in svc.get("endpoints", [])}
    return known == {f"{i.ip}:{i.port}" for i in emu.admin.instances(SERVICE_ID) if i.listed}


def _churn(emu: Emulator, rng: random.Random, result: SoakResult, in_sync: bool) -> None:
    """One platform event. Instances only go away while the agent knows the current set: if ModelArts
    is failing (an injected fault) and the platform kept removing instances, every instance the agent
    knows could be gone, and no agent could route around that. That case is not what a soak measures."""
    listed = [i for i in emu.admin.instances(SERVICE_ID) if i.listed]
    action = rng.choice(["scale", "scale", "kill", "fault"])
    if action == "scale":
        target = rng.randint(3, 6)
        emu.admin.scale(SERVICE_ID, target if in_sync else max(target, len(listed)))
    elif action == "kill" and len(listed) > 2 and in_sync:
        victim = rng.choice(listed)
        emu.admin.kill(victim.instance_id)
        # The platform notices a few seconds later and replaces it.
        threading.Timer(3.0, _replace, args=(emu, victim.instance_id)).start()
    else:
        kind, params = rng.choice(FAULTS)
        # Fewer empty answers than the confirmations needed to drain (3): a confirmed empty list is believed.
        count = rng.randint(1, 2) if kind == "empty" else rng.randint(1, 3)
        emu.admin.inject_fault(kind, service_id=SERVICE_ID, count=count, **params)
        result.faults_injected += 1
    result.churn_events += 1


def _replace(emu: Emulator, instance_id: str) -> None:
    try:
        emu.admin.remove(instance_id)
        emu.admin.scale(SERVICE_ID, max(3, len([i for i in emu.admin.instances(SERVICE_ID) if i.listed]) + 1))
    except Exception:  # the emulator may already be stopping at the end of the run
        pass


def _load(port: int, rate: float, stop: threading.Event, result: SoakResult) -> None:
    session = requests.Session()
    interval = 1.0 / rate
    next_at = time.monotonic()
    while not stop.is_set():
        try:
            resp = session.get(f"http://127.0.0.1:{port}/v1/infer", timeout=10)
            if resp.status_code == 200:
                result.requests_ok += 1
            else:
                key = f"HTTP {resp.status_code}"
                result.failures[key] = result.failures.get(key, 0) + 1
                result.requests_failed += 1
        except requests.RequestException as exc:
            key = type(exc).__name__
            result.failures[key] = result.failures.get(key, 0) + 1
            result.requests_failed += 1
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))


def plot(result: SoakResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(9, 6), sharex=True)
    xs = [s.at for s in result.samples]
    for ax, attr, label in zip(axes, ("rss_kb", "fds", "threads"), ("RSS (kB)", "open fds", "threads"), strict=True):
        ax.plot(xs, [getattr(s, attr) for s in result.samples])
        ax.set_ylabel(label)
    axes[-1].set_xlabel("seconds")
    fig.suptitle(f"agent soak: {result.requests_ok} ok, {result.requests_failed} failed, "
                 f"{result.churn_events} churn events")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


RSS_GROWTH_LIMIT_KB = 20_000
FD_GROWTH_LIMIT = 10
THREAD_GROWTH_LIMIT = 5


def check(result: SoakResult) -> list[str]:
    rss, fds, threads = result.growth()
    problems = []
    if result.requests_failed:
        problems.append(f"{result.requests_failed} failed GET requests: {result.failures}")
    if rss > RSS_GROWTH_LIMIT_KB:
        problems.append(f"agent RSS grew by {rss} kB (limit {RSS_GROWTH_LIMIT_KB})")
    if fds > FD_GROWTH_LIMIT:
        problems.append(f"agent open fds grew by {fds} (limit {FD_GROWTH_LIMIT})")
    if threads > THREAD_GROWTH_LIMIT:
        problems.append(f"agent threads grew by {threads} (limit {THREAD_GROWTH_LIMIT})")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--workdir", type=Path, default=Path("run/soak"))
    parser.add_argument("--plot", type=Path, default=Path("docs/img/soak.png"))
    parser.add_argument("--adaptive", choices=["auto", "false"], default="auto", help="lb.adaptive of the service")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    result = run_soak(args.seconds, args.workdir, adaptive=False if args.adaptive == "false" else "auto")
    plot(result, args.plot)
    rss, fds, threads = result.growth()
    print(f"soak {args.seconds:.0f}s: {result.requests_ok} ok, {result.requests_failed} failed, "
          f"{result.churn_events} churn events ({result.faults_injected} discovery faults); "
          f"growth: RSS {rss} kB, fds {fds}, threads {threads}; plot {args.plot}")
    problems = check(result)
    for problem in problems:
        print(f"FAIL: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
