"""A secret file is re-read when it is another file, even with the same modification time: a kubelet
`..data` swap makes a new file, and two swaps can land within one timestamp tick."""

from __future__ import annotations

import os
from pathlib import Path

from agent.modelarts.credentials import SecretSource


def test_a_replaced_file_with_the_same_mtime_and_size_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "password"
    path.write_text("first-secret")
    source = SecretSource("password", path, None)
    assert source.get() == "first-secret"
    stamp = path.stat().st_mtime_ns
    fresh = tmp_path / "password.new"
    fresh.write_text("other-secret")  # same length
    os.utime(fresh, ns=(stamp, stamp))
    os.replace(fresh, path)
    assert path.stat().st_mtime_ns == stamp and path.stat().st_size == len("first-secret")
    assert source.get() == "other-secret"

