"""Shared by the benches' SIGTERM tests: run a bench in a subprocess with its TMPDIR under a test's own
directory, SIGTERM it once its first Envoy is up, and say which Envoys and emulators outlived it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[1]


def _argv(pid: str) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def children_under(root: Path) -> list[int]:
    """Envoys and emulators whose command line names a path under `root`."""
    found = []
    for entry in Path("/proc").iterdir():
        argv = _argv(entry.name) if entry.name.isdigit() else []
        named = argv and (argv[0].endswith(b"envoy") or b"modelarts_emulator" in argv)
        if named and any(str(root).encode() in arg for arg in argv):
            found.append(int(entry.name))
    return found


def _envoy_up(root: Path) -> bool:
    return any(next(iter(_argv(str(pid))), b"").endswith(b"envoy") for pid in children_under(root))


def sigterm_once_envoy_is_up(module_argv: Sequence[str], root: Path) -> tuple[int, list[int]]:
    """`python -m <module_argv>` with TMPDIR=root, SIGTERMed once an Envoy of it runs: its exit status and
    the Envoys and emulators still running 10 s after it exited (each then killed, so none leaks)."""
    bench = subprocess.Popen([sys.executable, "-m", *module_argv], cwd=REPO, env={**os.environ, "TMPDIR": str(root)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: _envoy_up(root), timeout=120, what="the bench's first Envoy", interval=0.2)
        bench.send_signal(signal.SIGTERM)
        status = bench.wait(timeout=60)
        deadline = time.monotonic() + 10
        while children_under(root) and time.monotonic() < deadline:
            time.sleep(0.2)
        return status, children_under(root)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
        for pid in children_under(root):
            os.kill(pid, signal.SIGKILL)
