"""Scenario 8 run on its own (`python -m bench.scenarios.streaming`) stops every Envoy and emulator it started when
a harness timeout sends it SIGTERM: before, the three Envoys and the emulator outlived it, holding their ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]


def _children_under(root: Path) -> list[int]:
    """Envoys and emulators whose command line names a path under `root`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ours = argv[0].endswith(b"envoy") or b"modelarts_emulator" in argv
        if ours and any(str(root).encode() in arg for arg in argv):
            found.append(int(entry.name))
    return found


def _envoy(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"envoy")
    except OSError:
        return False


def test_sigterm_stops_the_scenarios_envoys_and_emulator(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    bench = subprocess.Popen([sys.executable, "-m", "bench.scenarios.streaming", "--quick", "--latency-qos", "off"],
                             cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: any(_envoy(pid) for pid in _children_under(tmp_path)), timeout=120,
                   what="the scenario's first Envoy", interval=0.2)
        bench.send_signal(signal.SIGTERM)
        bench.wait(timeout=60)
        deadline = time.monotonic() + 10
        while _children_under(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _children_under(tmp_path) == [], "children outlived the scenario"
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
        for pid in _children_under(tmp_path):
            os.kill(pid, signal.SIGKILL)
