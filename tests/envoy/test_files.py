"""The file sink: atomic, ordered, deterministic writes, and failures that leave the old files intact."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.envoy.serialize import parse_discovery_response
from agent.model import Endpoint, Snapshot
from agent.sinks.envoy.files import EnvoyFileSink
from agent.sinks.factory import sinks_for
from tests.envoy.harness import make_config, make_snapshot

SERVICES = [{"name": "alpha", "listen_port": 8001}, {"name": "beta", "listen_port": 8002}]
EPS = {"alpha": [Endpoint("10.0.0.1", 80), Endpoint("10.0.0.2", 80)], "beta": [Endpoint("10.0.1.1", 80)]}


def read_all(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_factory_returns_the_file_sink(tmp_path: Path) -> None:
    sinks = sinks_for(make_config(tmp_path / "out", 9901, SERVICES))
    assert [s.name for s in sinks] == ["envoy-files"]
    assert isinstance(sinks[0], EnvoyFileSink)


def test_construction_prepares_dir_with_empty_cds_and_lds(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b"
    EnvoyFileSink(make_config(root, 9901, SERVICES))
    assert (root / "eds").is_dir()
    for name, kind in (("cds.json", "cluster.v3.Cluster"), ("lds.json", "listener.v3.Listener")):
        response = parse_discovery_response((root / name).read_text())
        assert response.type_url == f"type.googleapis.com/envoy.config.{kind}"
        assert len(response.resources) == 0


def test_layout_and_each_file_is_a_discovery_response(tmp_path: Path) -> None:
    config = make_config(tmp_path, 9901, SERVICES)
    EnvoyFileSink(config).publish(make_snapshot(config, EPS))
    assert sorted(read_all(tmp_path)) == ["cds.json", "eds/alpha.json", "eds/beta.json", "lds.json"]
    cds = parse_discovery_response((tmp_path / "cds.json").read_text())
    assert [r.type_url for r in cds.resources] == ["type.googleapis.com/envoy.config.cluster.v3.Cluster"] * 2
    eds = parse_discovery_response((tmp_path / "eds" / "alpha.json").read_text())
    assert eds.type_url.endswith("ClusterLoadAssignment") and len(eds.resources) == 1
    assert eds.version_info and cds.version_info
    for path in tmp_path.rglob("*.json"):
        assert path.stat().st_mode & 0o777 == 0o644  # readable by an Envoy running as another user


def test_same_snapshot_gives_byte_identical_files_and_no_rewrite(tmp_path: Path) -> None:
    config = make_config(tmp_path, 9901, SERVICES)
    sink = EnvoyFileSink(config)
    first = make_snapshot(config, EPS)
    sink.publish(first)
    before = read_all(tmp_path)
    inodes = {p: p.stat().st_ino for p in tmp_path.rglob("*.json")}
    # Same content, higher version, services and endpoints given in another order.
    shuffled = Snapshot(version=7, services=MappingProxyType({
        name: svc.__class__(svc.name, svc.service_id, endpoints=tuple(reversed(svc.endpoints)), synced=True)
        for name, svc in reversed(list(first.services.items()))}))
    sink.publish(shuffled)
    assert sink.last_changed == ()
    assert read_all(tmp_path) == before
    assert {p: p.stat().st_ino for p in tmp_path.rglob("*.json")} == inodes
    # A fresh sink writing from scratch produces the very same bytes.
    for path in tmp_path.rglob("*.json"):
        path.unlink()
    EnvoyFileSink(config).publish(shuffled)
    assert read_all(tmp_path) == before


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 254), st.integers(1, 65535), st.booleans()), max_size=12))
def test_rendering_is_deterministic(tmp_path_factory: pytest.TempPathFactory,
                                    eps: list[tuple[int, int, bool]]) -> None:
    root = tmp_path_factory.mktemp("det")
    config = make_config(root, 9901, SERVICES)
    endpoints = [Endpoint(f"10.1.0.{a}", port, ready=ready) for a, port, ready in eps]
    EnvoyFileSink(config).publish(make_snapshot(config, {"alpha": endpoints}))
    once = read_all(root)
    EnvoyFileSink(config).publish(make_snapshot(config, {"alpha": list(reversed(endpoints))}, version=2))
    assert read_all(root) == once
    assigned = json.loads(once["eds/alpha.json"])["resources"][0].get("endpoints", [])
    count = len(assigned[0]["lb_endpoints"]) if assigned else 0
    assert count == len({(e.ip, e.port) for e in endpoints if e.ready})


class Recorder:
    """Records the order in which files are replaced and deleted (and what CDS held each time)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[str, str, Any]] = []
        real_replace = os.replace
        real_unlink = Path.unlink

        def replace(src: str, dst: str) -> None:
            real_replace(src, dst)
            name = Path(dst).name
            content = None
            if name == "cds.json":
                content = sorted(r["name"] for r in json.loads(Path(dst).read_text())["resources"])
            self.events.append(("write", f"{Path(dst).parent.name}/{name}", content))

        def unlink(path: Path, missing_ok: bool = False) -> None:
            real_unlink(path, missing_ok=missing_ok)
            if path.suffix == ".json":
                self.events.append(("delete", f"{path.parent.name}/{path.name}", None))

        monkeypatch.setattr("agent.sinks.envoy.files.os.replace", replace)
        monkeypatch.setattr(Path, "unlink", unlink)


def test_write_order_when_adding_and_removing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = make_config(tmp_path, 9901, SERVICES)
    sink = EnvoyFileSink(old)
    recorder = Recorder(monkeypatch)
    sink.publish(make_snapshot(old, EPS))
    root = tmp_path.name
    # Adding: every EDS file, then CDS, then LDS.
    assert recorder.events == [("write", "eds/alpha.json", None), ("write", "eds/beta.json", None),
                               ("write", f"{root}/cds.json", ["alpha", "beta"]), ("write", f"{root}/lds.json", None)]
    recorder.events.clear()
    # Replace beta by gamma: gamma's EDS, CDS with all three, LDS, CDS without beta, then beta's EDS goes.
    new = make_config(tmp_path, 9901, [SERVICES[0], {"name": "gamma", "listen_port": 8003}])
    sink.update_config(new)
    sink.publish(make_snapshot(new, {"alpha": EPS["alpha"], "gamma": [Endpoint("10.0.2.1", 80)]}, version=2))
    assert recorder.events == [
        ("write", "eds/gamma.json", None),
        ("write", f"{root}/cds.json", ["alpha", "beta", "gamma"]),
        ("write", f"{root}/lds.json", None),
        ("write", f"{root}/cds.json", ["alpha", "gamma"]),
        ("delete", "eds/beta.json", None),
    ]
    assert sorted(read_all(tmp_path)) == ["cds.json", "eds/alpha.json", "eds/gamma.json", "lds.json"]


def test_failed_replace_keeps_old_files_and_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config(tmp_path, 9901, SERVICES)
    sink = EnvoyFileSink(config)
    sink.publish(make_snapshot(config, EPS))
    before = read_all(tmp_path)

    def disk_full(src: str, dst: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("agent.sinks.envoy.files.os.replace", disk_full)
    changed = {"alpha": [Endpoint("10.0.0.9", 80)], "beta": EPS["beta"]}
    with pytest.raises(OSError) as info:
        sink.publish(make_snapshot(config, changed, version=2))
    assert info.value.errno == errno.ENOSPC
    assert read_all(tmp_path) == before  # old files intact, and no temp file left behind
    monkeypatch.undo()
    sink.publish(make_snapshot(config, changed, version=3))  # the runner's retry succeeds
    assert b"10.0.0.9" in (tmp_path / "eds" / "alpha.json").read_bytes()


def test_blocked_eds_path_stops_before_cds(tmp_path: Path) -> None:
    """A new service whose EDS file cannot be written must not reach CDS (Envoy would reject it)."""
    config = make_config(tmp_path, 9901, SERVICES[:1])
    sink = EnvoyFileSink(config)
    sink.publish(make_snapshot(config, EPS))
    before = read_all(tmp_path)
    (tmp_path / "eds" / "beta.json").mkdir()  # something in the way: os.replace fails with EISDIR
    both = make_config(tmp_path, 9901, SERVICES)
    sink.update_config(both)
    with pytest.raises(IsADirectoryError):
        sink.publish(make_snapshot(both, EPS, version=2))
    assert read_all(tmp_path) == before
    assert [p.name for p in (tmp_path / "eds").iterdir() if p.name.startswith(".")] == []


def test_leftover_temp_files_are_removed_on_start(tmp_path: Path) -> None:
    config = make_config(tmp_path, 9901, SERVICES)
    EnvoyFileSink(config)
    crumbs = [tmp_path / ".cds.json.abc123.tmp", tmp_path / "eds" / ".alpha.json.x.tmp"]
    for crumb in crumbs:
        crumb.write_text("{partial")
    keep = tmp_path / "notes.txt"
    keep.write_text("not ours")
    EnvoyFileSink(config)
    assert not any(c.exists() for c in crumbs)
    assert keep.exists()


def test_output_dir_change_on_reload_is_ignored_until_restart(tmp_path: Path) -> None:
    config = make_config(tmp_path / "one", 9901, SERVICES)
    sink = EnvoyFileSink(config)
    sink.update_config(make_config(tmp_path / "two", 9901, SERVICES))
    sink.publish(make_snapshot(config, EPS))
    assert (tmp_path / "one" / "eds" / "alpha.json").exists()
    assert not (tmp_path / "two").exists()
