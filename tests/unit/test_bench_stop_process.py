"""bench/kube_bench.stop_process, which the benchmarks' measured children are stopped with: SIGTERM first,
SIGKILL for a child that ignores it, and nothing for one that is gone."""

from __future__ import annotations

import subprocess
import sys
import time

from bench.kube_bench import stop_process


def _child(code: str) -> subprocess.Popen[bytes]:
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdout.readline() == b"ready\n"  # its handler is in place
    return child


def test_a_child_that_exits_on_sigterm_is_terminated() -> None:
    child = _child("import time; print('ready', flush=True); time.sleep(60)")
    stop_process(child, 10)
    assert child.returncode == -15


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace() -> None:
    child = _child("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
                   "time.sleep(60)")
    started = time.monotonic()
    stop_process(child, 0.3)
    assert child.returncode == -9
    assert time.monotonic() - started >= 0.3


def test_nothing_to_stop() -> None:
    stop_process(None, 1)
    child = _child("print('ready', flush=True)")
    child.wait(10)
    stop_process(child, 1)  # already gone: no signal, no error
    assert child.returncode == 0
