"""/status has one shape in every mode: a `run` agent and a `sidecar` answer with the same top-level keys and
the same keys per service (what differs by mode sits under `modelarts` / `kubernetes`), so dashboards, the
`status` command and scripts read any agent alike.

Both are the real CLI in a subprocess, with nothing to reach: the run agent's ModelArts and the sidecar's
apiserver are a closed loopback port, so their status pages show failures, not data.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.envoy.harness import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
NOBODY = "http://127.0.0.1:9"  # discard port: nothing listens
SERVICES = [{"name": "llm", "listen_port": 10080}, {"name": "chat", "listen_port": 10081}]
SHARED = {"mode", "snapshot_version", "ready", "uptime_seconds", "clock", "services", "sources", "poller",
          "budgets", "sinks", "modelarts", "kubernetes"}


def start(argv: list[str], admin_port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "agent", *argv, "--admin-port", str(admin_port)], cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "MODELARTS_TOKEN": "t"})


def status(port: int) -> dict[str, Any] | None:
    try:
        return requests.get(f"http://127.0.0.1:{port}/status", timeout=2).json()  # type: ignore[no-any-return]
    except requests.RequestException:
        return None


@pytest.fixture
def pages(tmp_path: Path) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    common = {"envoy": {"output_dir": str(tmp_path / "envoy")}, "discovery": {"allowed_cidrs": ["10.0.0.0/8"]}}
    run_config = tmp_path / "run.yaml"
    run_config.write_text(yaml.safe_dump({
        **common, "modelarts": {"iam_url": NOBODY, "modelarts_url": NOBODY, "project_id": "p"},
        "auth": {"mode": "token"}, "services": [{**s, "service_id": f"svc-{s['name']}"} for s in SERVICES]}))
    sidecar_config = tmp_path / "sidecar.yaml"
    sidecar_config.write_text(yaml.safe_dump({**common, "services": SERVICES}))
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": NOBODY}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    ports = free_port(), free_port()
    procs = [start(["run", "--config", str(run_config)], ports[0], tmp_path / "run.log"),
             start(["sidecar", "--config", str(sidecar_config), "--kubeconfig", str(kubeconfig),
                    "--namespace", "apps"], ports[1], tmp_path / "sidecar.log")]
    try:
        # Once every service was polled (run) or every watch tried (sidecar), both pages hold their failures.
        def tried(port: int) -> bool:
            page = status(port)
            if page is None or len(page.get("services") or []) != 2:
                return False
            watches = (page.get("kubernetes") or page).get("watch_errors") or {}  # top level in older versions
            return all(s["last_error"] for s in page["services"]) or (len(watches) == 2 and all(watches.values()))

        for port, name in zip(ports, ("run", "sidecar"), strict=True):
            assert wait_until(functools.partial(tried, port), 30), (tmp_path / f"{name}.log").read_text()[-3000:]
        run_page, sidecar_page = status(ports[0]), status(ports[1])
        assert run_page is not None and sidecar_page is not None
        yield run_page, sidecar_page
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(15)


def test_run_and_sidecar_status_pages_have_the_same_keys(pages: tuple[dict[str, Any], dict[str, Any]]) -> None:
    run_page, sidecar_page = pages
    assert set(run_page) == set(sidecar_page), set(run_page) ^ set(sidecar_page)
    assert set(run_page) >= SHARED, SHARED - set(run_page)
    run_service, sidecar_service = run_page["services"][0], sidecar_page["services"][0]
    assert set(run_service) == set(sidecar_service), set(run_service) ^ set(sidecar_service)
    # Each mode's own facts, under its key.
    assert run_page["mode"] == "run" and sidecar_page["mode"] == "sidecar"
    assert run_page["modelarts"] == {"modelarts_url": NOBODY, "project_id": "p"} and run_page["kubernetes"] is None
    assert sidecar_page["modelarts"] is None and sidecar_page["kubernetes"]["namespace"] == "apps"
    assert set(sidecar_page["kubernetes"]["watch_errors"]) == {"llm", "chat"}
    assert run_page["budgets"] and sidecar_page["budgets"] == []  # the sidecar spends no ModelArts budget
    assert [s["kind"] for s in run_page["sources"]] == ["modelarts"]
    assert sorted(s["name"] for s in sidecar_page["sources"]) == ["endpointslices-chat", "endpointslices-llm"]
    assert run_page["poller"]["alive"] and sidecar_page["poller"]["alive"]
    assert isinstance(run_service["effective_poll_interval_seconds"], float)
    assert sidecar_service["effective_poll_interval_seconds"] is None  # watched, not polled
