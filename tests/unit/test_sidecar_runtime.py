"""The sidecar is a preset of the shared builder, so it gets what `run` has: a rotated API-key file (rendered
into Envoy's listener config) re-renders at once, with no restart and no config change."""

from __future__ import annotations

from pathlib import Path

from kubernetes import client as k8s

from agent.app.sidecar import SidecarRuntime
from agent.cli.sidecar_cmd import follow, load_sidecar_config
from agent.config import DataPlaneConfig
from agent.kube.client import KubeClient
from agent.model import Snapshot
from tests.unit.test_file_watch import wait_until


class CountingSink:
    name = "counting"

    def __init__(self) -> None:
        self.published = 0

    def publish(self, snapshot: Snapshot) -> None:
        self.published += 1


def test_a_sidecar_re_renders_when_an_api_key_file_changes(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("app:first-key\n")
    path = tmp_path / "sidecar.yaml"
    path.write_text(f"admin: {{port: 0}}\nservices:\n  - name: chat\n    listen_port: 10080\n"
                    f"    auth: {{api_key: {{keys_file: {keys}}}}}\n")

    def load(p: Path) -> DataPlaneConfig:
        return follow(load_sidecar_config(p, []), [])

    sink = CountingSink()
    kube = KubeClient(k8s.ApiClient(k8s.Configuration(host="http://127.0.0.1:9")))  # nothing listens: no slices
    runtime = SidecarRuntime(load(path), path, kube=kube, namespace="apps", loader=load,
                             sink_factory=lambda _config: [sink])
    runtime.start()
    try:
        assert wait_until(lambda: sink.published >= 1), "the first publication"
        before = sink.published
        keys.write_text("app:rotated-key\n")
        assert wait_until(lambda: sink.published > before), "a rotated key file was not re-rendered"
    finally:
        runtime.stop()
