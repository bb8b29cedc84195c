"""bench/streams_adaptive.py stops its Envoy and its emulator when a harness timeout sends it SIGTERM
(before, Python died at once and both outlived it, holding their ports and a core's worth of work)."""

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
    """Envoys and emulators whose command line names a path under `root` (this test's TMPDIR)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        named = argv and (argv[0].endswith(b"envoy") or b"modelarts_emulator" in argv)
        if named and any(str(root).encode() in arg for arg in argv):
            found.append(int(entry.name))
    return found


def _envoy_up(root: Path) -> bool:
    return any(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"envoy")
               for pid in _children_under(root) if Path(f"/proc/{pid}").exists())


def test_sigterm_stops_the_benchs_envoy_and_emulator(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    out = tmp_path / "out.json"
    bench = subprocess.Popen([sys.executable, "-m", "bench.streams_adaptive", "--cells", "identical", "--rounds", "1",
                              "--segment", "60", "--output", str(out)],
                             cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: _envoy_up(tmp_path), timeout=120, what="the bench's Envoy", interval=0.2)
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(timeout=60) != 0
        deadline = time.monotonic() + 10
        while _children_under(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _children_under(tmp_path) == [], "Envoy or the emulator outlived the bench"
        assert not out.exists()  # an interrupted run writes nothing
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
        for pid in _children_under(tmp_path):
            os.kill(pid, signal.SIGKILL)
