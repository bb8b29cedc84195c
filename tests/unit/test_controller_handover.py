"""Taking leadership while the CR watch delivers: the pipeline must end up with the newest CRs.

Regression test: `_started_leading` used to read the CRs under the lock but submit them after
releasing it, so a watch event in between was overwritten by the older set (empty, when leadership
came before the first list). The pipeline then polled nothing until the next CR change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from kubernetes import client as k8s

from agent.controller import controller as controller_module
from agent.controller.controller import Controller, ControllerSettings
from agent.kube.client import KubeClient
from agent.kube.leader import LeaseConfig

NEWER = {"ns/llm": {"metadata": {"namespace": "ns", "name": "llm"}}}


class RecordingPipeline:
    """Stands in for the Pipeline; its start() is when a watch event arrives."""

    on_start: Any = None

    def __init__(self, *_args: Any) -> None:
        self.submitted: list[dict[str, Any]] = []

    def submit(self, crs: Mapping[str, dict[str, Any]]) -> None:
        self.submitted.append(dict(crs))

    def start(self) -> None:
        if RecordingPipeline.on_start is not None:
            RecordingPipeline.on_start()

    def halt(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_watch_event_during_the_takeover_is_not_overwritten(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(controller_module, "Pipeline", RecordingPipeline)
    kube = KubeClient(k8s.ApiClient(k8s.Configuration(host="http://127.0.0.1:9")))  # never called
    controller = Controller(kube, ControllerSettings(lease=LeaseConfig(namespace="ns", name="lease",
                                                                       identity="me")))
    # Leadership comes before the first list (no CRs yet); the list arrives while the pipeline starts.
    RecordingPipeline.on_start = lambda: controller._on_crs(NEWER)
    try:
        controller._started_leading()
    finally:
        RecordingPipeline.on_start = None
    pipeline = controller._pipeline
    assert isinstance(pipeline, RecordingPipeline)
    assert pipeline.submitted[-1] == NEWER, pipeline.submitted
    kube.close()
