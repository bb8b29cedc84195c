"""A real full disk and a real read-only filesystem under the Envoy file sink.

The sink runs in a child process inside its own user + mount namespace (`unshare -rm`), on a 256 KiB
tmpfs that is filled to the last block, then freed, then remounted read-only. Nothing on the host is
mounted or touched. Each failed write must leave the previous files whole and parseable (Envoy keeps
serving them) with no temp file left over, and the next write after the fault clears must succeed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def probe(tmp_path: Path) -> dict[str, object]:
    if shutil.which("unshare") is None:
        pytest.fail("these tests need unshare (util-linux), which `make test` installs with the system packages")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    run = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", sys.executable, "-m",
                          "tests.hardening.disk_probe", str(mount_point)],
                         cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_full_disk_keeps_the_last_files_and_recovers(probe: dict[str, object]) -> None:
    assert probe["first"] is None and probe["filled_with"] == "ENOSPC"
    assert probe["full"] == "ENOSPC", probe
    assert probe["unchanged_when_full"] is True and probe["temp_files_when_full"] == []
    assert probe["after_space_freed"] is None and probe["recovered_alpha_endpoints"] == 300


def test_read_only_disk_keeps_the_last_files(probe: dict[str, object]) -> None:
    assert probe["read_only"] == "EROFS", probe
    assert probe["unchanged_when_read_only"] is True and probe["all_parse"] is True
