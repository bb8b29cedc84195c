"""scripts/proto_stubs.py gives mypy the Envoy protos' real types (xds-protos ships none)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_mypy_checks_envoy_proto_fields_with_the_generated_stubs(tmp_path: Path) -> None:
    typings = tmp_path / "typings"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "proto_stubs.py"), str(typings)], check=True,
                   capture_output=True, timeout=120)
    assert (typings / "envoy" / "config" / "cluster" / "v3" / "cluster_pb2.pyi").is_file()
    snippet = tmp_path / "snippet.py"
    snippet.write_text("from envoy.config.cluster.v3 import cluster_pb2\n"
                       "from envoy.config.core.v3 import base_pb2\n"
                       "ok = cluster_pb2.Cluster(name='a')\n"
                       "node: base_pb2.Node = base_pb2.Node(id='n')\n"
                       "wrong = cluster_pb2.Cluster(name=1)\n")
    (tmp_path / "mypy.ini").write_text(f"[mypy]\nmypy_path = {typings}\nignore_missing_imports = True\n")
    proc = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(tmp_path / "mypy.ini"),
                           "--no-incremental", "--cache-dir", str(tmp_path / "cache"), str(snippet)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    # Only the int passed for a string field is wrong; without the stubs every proto is Any and mypy is silent.
    assert len(errors) == 1 and "snippet.py:5:" in errors[0] and '"Cluster"' in errors[0], proc.stdout
