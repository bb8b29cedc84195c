"""Shared helpers for the chart, plain-manifest and inject tests: the real helm and kubectl binaries
(built by scripts/testenv/build.sh) and, for the install tests, a real kube-apiserver on loopback."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import kubeenv

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "modelarts-agent"
HERE = Path(__file__).resolve().parent
VALUES_ALL = HERE / "values-all.yaml"
APP = HERE / "app.yaml"
NAMESPACE = "modelarts-system"

kube_env = kubeenv.kube_env


@pytest.fixture(scope="session")
def bin_dir() -> Path:
    return kubeenv.ensure_binaries()


@pytest.fixture(scope="session")
def helm_bin(bin_dir: Path) -> Path:
    return bin_dir / "helm"


def run(argv: list[str | Path], *, check: bool = True, env: dict[str, str] | None = None,
        input: str | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=120, env=env, input=input,
                          check=False, stdin=None if input is not None else subprocess.DEVNULL)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(str(a) for a in argv)} failed ({proc.returncode}):\n{proc.stderr}", pytrace=False)
    return proc


class Helm:
    """`helm template` / `helm lint` without a cluster (helm's own state in a temp dir)."""

    def __init__(self, binary: Path, home: Path) -> None:
        self.binary = binary
        self.env = {"HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
                    "HELM_DATA_HOME": str(home / "data"), "PATH": "/usr/bin:/bin"}

    def __call__(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([self.binary, *args], check=check, env=self.env)

    def template(self, *args: str | Path, release: str = "modelarts-agent", namespace: str = NAMESPACE,
                 check: bool = True) -> subprocess.CompletedProcess[str]:
        return self("template", release, CHART, "--namespace", namespace, *args, check=check)

    def objects(self, *args: str | Path, release: str = "modelarts-agent",
                namespace: str = NAMESPACE) -> list[dict[str, Any]]:
        return [d for d in yaml.safe_load_all(self.template(*args, release=release, namespace=namespace).stdout) if d]


@pytest.fixture(scope="session")
def helm(helm_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(helm_bin, tmp_path_factory.mktemp("helm-home"))


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in matches]}"
    return matches[0]


def kinds(objects: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(o["kind"], o["metadata"]["name"]) for o in objects}


def load_yaml_docs(path: Path) -> Iterator[dict[str, Any]]:
    yield from (d for d in yaml.safe_load_all(path.read_text()) if d)
