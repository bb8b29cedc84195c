"""Write a directory exactly as the kubelet writes a ConfigMap/Secret volume (its AtomicWriter).

Layout after a write:

    dir/..2026_12_01_20_30_00.4102317/<file>   the data (a fresh directory per write)
    dir/..data -> ..2026_12_01_20_30_00.4102317
    dir/<file> -> ..data/<file>

An update (pkg/volume/util/atomic_writer.go, Write): create the new timestamped directory and write
the payload into it, create the symlink `..data_tmp` to it, rename `..data_tmp` over `..data` (the
one atomic step), create the user-visible symlinks that are missing, remove the ones no longer in
the payload, and delete the old timestamped directory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

DATA_DIR = "..data"
NEW_DATA_DIR = "..data_tmp"


class AtomicWriter:
    def __init__(self, target_dir: Path) -> None:
        self.target_dir = target_dir
        target_dir.mkdir(parents=True, exist_ok=True)

    def _current(self) -> str | None:
        try:
            return os.readlink(self.target_dir / DATA_DIR)
        except OSError:
            return None

    def write(self, payload: Mapping[str, str | bytes]) -> Path:
        """Publish `payload` (file name -> content); returns the new timestamped directory."""
        old = self._current()
        old_names = set(os.listdir(self.target_dir / old)) if old else set()
        stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime())
        ts_dir = Path(tempfile.mkdtemp(prefix=stamp, dir=self.target_dir))
        for name, content in payload.items():
            data = content.encode() if isinstance(content, str) else content
            (ts_dir / name).write_bytes(data)
            os.chmod(ts_dir / name, 0o644)
        os.chmod(ts_dir, 0o755)
        tmp_link = self.target_dir / NEW_DATA_DIR
        if tmp_link.is_symlink():
            tmp_link.unlink()
        os.symlink(ts_dir.name, tmp_link)
        os.rename(tmp_link, self.target_dir / DATA_DIR)
        for name in payload:
            visible = self.target_dir / name
            if not visible.is_symlink():
                os.symlink(os.path.join(DATA_DIR, name), visible)
        for name in old_names - set(payload):
            (self.target_dir / name).unlink(missing_ok=True)
        if old:
            shutil.rmtree(self.target_dir / old, ignore_errors=True)
        return ts_dir
