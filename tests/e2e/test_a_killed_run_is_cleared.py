"""The cluster fixture clears what a killed earlier run left behind: a cluster started in a child
process, with a pod running, is SIGKILLed; the next start (here: clear_leftovers) removes its
processes, mounts, cgroups, namespace and files. Runs before the session's cluster starts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import IMAGE, IMAGE_ARCHIVES, REPO, build_images, wait_until
from tests.e2e.nodecluster import NETNS_PATH, clear_leftovers, leftovers
from tests.kubeenv import default_bin_dir


def group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is still in process group `pgid` (from /proc/<pid>/stat)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue  # gone meanwhile
        if state != "Z" and int(pgrp) == pgid:
            return True
    return False


def test_a_sigkilled_cluster_is_cleared_before_the_next_start(tmp_path: Path) -> None:
    if os.environ.get("E2E_KUBECONFIG"):
        pytest.skip("runs against the project's own node cluster only (E2E_KUBECONFIG names another cluster)")
    build_images()
    ready = tmp_path / "ready"
    log = (tmp_path / "up.log").open("w")
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.e2e.nodecluster", "up", "--ready-file", str(ready),
         *[f"--image={a}" for a in IMAGE_ARCHIVES]],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    while not ready.exists():
        assert child.poll() is None, (tmp_path / "up.log").read_text()[-4000:]
        assert time.monotonic() < deadline, "the child cluster did not come up"
        time.sleep(1)
    kubectl = [str(default_bin_dir() / "kubectl"), f"--kubeconfig={ready.read_text()}"]
    pod = ("apiVersion: v1\nkind: Pod\nmetadata: {name: left, namespace: default}\nspec:\n"
           f"  containers: [{{name: c, image: '{IMAGE}', command: [sleep, '3600']}}]\n")
    # The child's namespace: run kubectl inside it.
    enter = ["nsenter", f"--net={NETNS_PATH}"]
    subprocess.run([*enter, *kubectl, "apply", "-f", "-"], input=pod, text=True, check=True, timeout=60)
    subprocess.run([*enter, *kubectl, "wait", "--for=condition=Ready", "pod/left", "--timeout=120s"], check=True,
                   timeout=150)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait(30)
    # Its apiserver, kubelet, ... (same process group) die with it; what they leave behind is the point.
    wait_until(lambda: not group_alive(child.pid), 15, "the killed cluster's processes to be gone", interval=0.1)
    left = leftovers()
    assert any(item.startswith("netns") for item in left) and any(item.startswith("mount") for item in left), left
    cleared = clear_leftovers()
    kinds = {word: sum(1 for line in cleared if line.startswith(word)) for word in
             ("killed", "unmounted", "removed cgroup", "deleted network namespace", "removed /")}
    print(f"\n[e2e] cleared after a SIGKILLed run: {cleared[0] if cleared else ''}; " +
          ", ".join(f"{n} x {k}" for k, n in kinds.items() if n and k != "killed"))
    assert leftovers() == []
