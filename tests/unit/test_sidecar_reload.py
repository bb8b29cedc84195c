"""The sidecar's config reload: a new file re-renders the followed services' policies, keeping each CR's
announced load balancing; the followed set waits for a restart; the watcher reads the sidecar's config shape."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import pytest

from agent.app.sidecar import reloaded
from agent.cli.sidecar_cmd import follow, load_sidecar_config
from agent.config import AgentConfig, LbPolicy
from agent.file_watch import ConfigWatcher
from tests.unit.test_file_watch import AtomicWriter, has_length, wait_until
from tests.unit.test_kube_load_balancing import controller_objects, sidecar

SLICES = {f"apps/{o['metadata']['name']}": o for o in controller_objects(
    {"policy": "maglev", "hashHeader": "x-user"}) if o["kind"] == "EndpointSlice"}


def load(path: Path, text: str) -> AgentConfig:
    path.write_text(text)
    return follow(load_sidecar_config(path, []), [])


def test_a_reload_re_renders_the_policy_with_the_crs_load_balancing(tmp_path: Path) -> None:
    _, source, _ = sidecar(tmp_path, "")
    source._on_change(SLICES)
    new = load(tmp_path / "new.yaml", "services:\n  - name: chat\n    listen_port: 10081\n"
                                      "    timeouts: {request_seconds: 7}\n")
    [spec] = reloaded(new, {"chat": source}).services
    assert spec.listen_port == 10081 and spec.timeouts.request_seconds == 7
    assert spec.lb.policy is LbPolicy.maglev and spec.lb.hash_key is not None and spec.lb.hash_key.header == "x-user"
    assert source.policy == spec
    # An lb written in the new file wins over the CR's, as at start-up.
    new = load(tmp_path / "new.yaml", "services:\n  - name: chat\n    listen_port: 10081\n"
                                      "    lb: {policy: round_robin}\n")
    assert reloaded(new, {"chat": source}).services[0].lb.policy is LbPolicy.round_robin
    # And the CR's announcement, read again later, still does not override it.
    source._on_change(SLICES)
    assert source.policy.lb.policy is LbPolicy.round_robin


def test_a_reload_keeps_the_followed_services(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _, source, _ = sidecar(tmp_path, "")
    new = load(tmp_path / "new.yaml", "services:\n  - name: chat\n    listen_port: 10080\n"
                                      "  - name: other\n    listen_port: 10090\n")
    with caplog.at_level(logging.WARNING, logger="agent.app.sidecar"):
        rendered = reloaded(new, {"chat": source})
    assert [s.name for s in rendered.services] == ["chat"]
    assert "+other" in caplog.text


def test_the_config_watcher_reads_the_sidecar_config_shape(tmp_path: Path) -> None:
    vol = tmp_path / "config"
    writer = AtomicWriter(vol)
    writer.write({"agent.yaml": "services:\n  - name: chat\n    listen_port: 10080\n"})
    applied: list[AgentConfig] = []
    # No modelarts or auth section: the default loader (load_config) refuses this file.
    watcher = ConfigWatcher(vol / "agent.yaml", applied.append, debounce_seconds=0.05,
                            loader=lambda path: follow(load_sidecar_config(path, []), []))
    watcher.start()
    try:
        writer.write({"agent.yaml": "services:\n  - name: chat\n    listen_port: 10081\n"})
        assert wait_until(functools.partial(has_length, applied, 1)), "the new sidecar config was not applied"
        assert applied[-1].services[0].listen_port == 10081
    finally:
        watcher.stop()
