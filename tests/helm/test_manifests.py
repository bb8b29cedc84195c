"""manifests/: the plain YAML rendered from the chart must not drift from it, and must build with kustomize."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from tests.helm.conftest import REPO, find, run

RENDERED = REPO / "manifests" / "install" / "modelarts-agent.yaml"


def test_rendered_manifests_have_not_drifted(helm_bin: Path, tmp_path: Path) -> None:
    out = tmp_path / "modelarts-agent.yaml"
    run([REPO / "scripts" / "render-manifests", out], env={**os.environ, "HELM": str(helm_bin)})
    assert out.read_text() == RENDERED.read_text(), (
        "manifests/install/modelarts-agent.yaml is out of date with helm/modelarts-agent: run scripts/render-manifests")


def test_kustomization_builds_the_crd_namespace_and_controller(bin_dir: Path) -> None:
    proc = run([bin_dir / "kubectl", "kustomize", REPO / "manifests"])
    objects = [d for d in yaml.safe_load_all(proc.stdout) if d]
    kinds = {o["kind"] for o in objects}
    assert {"CustomResourceDefinition", "Namespace", "Deployment", "ClusterRole", "ServiceAccount"} <= kinds
    namespace = find(objects, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert all(o["metadata"].get("namespace") in (None, "modelarts-system") for o in objects)
