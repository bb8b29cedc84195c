"""Scenario 8 run on its own (`python -m bench.scenarios.streaming`) stops every Envoy it started when a harness
timeout sends it SIGTERM: before, the three Envoys outlived it, holding their ports and a core's worth of wake-ups."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]


def _envoys_under(root: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"envoy") and any(str(root).encode() in arg for arg in argv):
            found.append(int(entry.name))
    return found


def test_sigterm_stops_the_scenarios_envoys(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    bench = subprocess.Popen([sys.executable, "-m", "bench.scenarios.streaming", "--quick", "--latency-qos", "off"],
                             cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: len(_envoys_under(tmp_path)) >= 1, timeout=120, what="the scenario's first Envoy",
                   interval=0.2)
        bench.send_signal(signal.SIGTERM)
        bench.wait(timeout=60)
        deadline = time.monotonic() + 10
        while _envoys_under(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _envoys_under(tmp_path) == [], "Envoys outlived the scenario"
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
        for pid in _envoys_under(tmp_path):
            os.kill(pid, signal.SIGKILL)
