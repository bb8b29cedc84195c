"""bench/import_cost.py, the breakdown of the sidecar's RSS in docs/benchmarks.md ("Cost per pod")."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bench import import_cost


def test_a_held_back_group_leaves_out_what_needs_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """bench.import_cost groups: while a group is held back, a module that imports it is left out (its cost
    then goes to the group's dependents, not to what imports without it)."""
    (tmp_path / "heldpkg_x").mkdir()
    (tmp_path / "heldpkg_x" / "__init__.py").write_text("VALUE = 1\n")
    (tmp_path / "needs_heldpkg_x.py").write_text("import heldpkg_x\n")
    (tmp_path / "plain_module_x.py").write_text("VALUE = 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("heldpkg_x", "needs_heldpkg_x", "plain_module_x"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    refuse = import_cost._Refuse(("heldpkg_x",))
    sys.meta_path.insert(0, refuse)
    try:
        import_cost._import_all(["needs_heldpkg_x", "plain_module_x"])
    finally:
        sys.meta_path.remove(refuse)
    assert "plain_module_x" in sys.modules
    assert "needs_heldpkg_x" not in sys.modules and "heldpkg_x" not in sys.modules
    import_cost._import_all(["heldpkg_x", "needs_heldpkg_x"])
    assert "needs_heldpkg_x" in sys.modules
