"""`EnvoyFileSink`: writes the Envoy resources as xDS files that a colocated Envoy watches.

Every file is replaced atomically (temp file in the same directory, fsync, rename), and the files are
written in an order that keeps what is on disk consistent at every instant:

1. EDS files of every cluster (a new cluster's endpoints exist before the cluster does);
2. CDS with the new clusters plus any removed ones (listeners on disk may still route to them);
3. LDS (now nothing routes to removed clusters);
4. CDS with exactly the new clusters (a no-op unless clusters were removed);
5. delete EDS files of clusters that are gone.

A failing write raises and leaves the previous file in place; the sink runner retries, and files
whose content is unchanged are not rewritten.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path

from envoy.config.cluster.v3 import cluster_pb2
from google.protobuf.message import Message

from agent.config import DataPlaneConfig
from agent.envoy.clusters import EndpointWeights, build_load_assignment
from agent.envoy.layout import SUFFIX, TEMP_SUFFIX, FileLayout
from agent.envoy.resources import EnvoyResources, build_resources
from agent.envoy.serialize import (
    CLUSTER_TYPE,
    LISTENER_TYPE,
    LOAD_ASSIGNMENT_TYPE,
    discovery_response,
    parse_discovery_response,
    to_json,
)
from agent.errors import ConfigError
from agent.model import Snapshot

log = logging.getLogger(__name__)

FILE_MODE = 0o644  # Envoy may run as another user; mkstemp would leave 0600


def atomic_write(path: Path, data: bytes) -> bool:
    """Replace `path` with `data` atomically; False if it already held exactly `data`."""
    try:
        if path.read_bytes() == data:
            return False
    except OSError:
        pass  # missing or unreadable: write it (and let the replace report a real problem)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), FILE_MODE)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return True


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable across a crash of the host, not just of the agent.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prepare_output_dir(layout: FileLayout) -> None:
    """Create the directories and empty CDS/LDS files: Envoy refuses to start if they are missing."""
    layout.eds_dir.mkdir(parents=True, exist_ok=True)
    for path, resource_type in ((layout.cds_path, CLUSTER_TYPE), (layout.lds_path, LISTENER_TYPE)):
        if not path.exists():
            atomic_write(path, render(resource_type, []))


def render(resource_type: str, resources: Iterable[Message]) -> bytes:
    return to_json(discovery_response(resource_type, resources)).encode("utf-8")


class EnvoyFileSink:
    name = "envoy-files"

    def __init__(self, config: DataPlaneConfig) -> None:
        self._config = config
        self.layout = FileLayout.for_config(config.envoy)
        self._lock = threading.Lock()
        self.last_changed: tuple[Path, ...] = ()
        # Adaptive LB weights and the snapshot they apply to: `update_weights` rewrites EDS files only.
        self._weights: EndpointWeights = {}
        self._published: Snapshot | None = None
        try:
            prepare_output_dir(self.layout)
        except OSError as exc:
            raise ConfigError(f"envoy.output_dir {self.layout.root} cannot be created or written: "
                              f"{exc.strerror or exc}") from None
        self._remove_temp_files()

    def update_config(self, config: DataPlaneConfig) -> None:
        """Hot reload: new policies, splits and listeners apply at the next publish."""
        with self._lock:
            if FileLayout.for_config(config.envoy) != self.layout:
                log.warning("envoy.output_dir changed: keep writing to %s until restart (Envoy's bootstrap "
                            "points there)", self.layout.root)
                config = config.model_copy(update={"envoy": config.envoy.model_copy(
                    update={"output_dir": self.layout.root})})
            self._config = config

    def publish(self, snapshot: Snapshot) -> None:
        with self._lock:
            resources = build_resources(snapshot, self._config, self.layout.eds_source, weights=self._weights)
            self.last_changed = tuple(self._write(resources))
            self._published = snapshot
        if self.last_changed:
            log.info("envoy files updated", extra={"version": snapshot.version,
                                                   "files": [str(p) for p in self.last_changed]})

    def update_weights(self, weights: EndpointWeights) -> None:
        """New adaptive weights: rewrite the EDS files whose content changes, and nothing else.

        CDS and LDS stay as they are; the next `publish` keeps using these weights.
        """
        with self._lock:
            self._weights = {name: dict(per) for name, per in weights.items()}
            snapshot = self._published
            if snapshot is None:
                return
            changed = []
            for svc in snapshot.services.values():
                assignment = build_load_assignment(svc, self._weights.get(svc.name))
                path = self.layout.eds_path(svc.name)
                if atomic_write(path, render(LOAD_ASSIGNMENT_TYPE, [assignment])):
                    changed.append(path)
        if changed:
            log.debug("envoy EDS weights updated", extra={"files": [str(p) for p in changed]})

    def _write(self, resources: EnvoyResources) -> list[Path]:
        layout = self.layout
        layout.eds_dir.mkdir(parents=True, exist_ok=True)
        changed: list[Path] = []

        def write(path: Path, data: bytes) -> None:
            if atomic_write(path, data):
                changed.append(path)

        for assignment in resources.load_assignments:
            write(layout.eds_path(assignment.cluster_name), render(LOAD_ASSIGNMENT_TYPE, [assignment]))
        names = set(resources.cluster_names)
        # Clusters being removed stay for one more CDS write, until LDS no longer routes to them.
        leaving = [c for name, c in self._clusters_on_disk().items() if name not in names]
        bridge = sorted([*resources.clusters, *leaving], key=lambda c: c.name)
        write(layout.cds_path, render(CLUSTER_TYPE, bridge))
        write(layout.lds_path, render(LISTENER_TYPE, resources.listeners))
        write(layout.cds_path, render(CLUSTER_TYPE, resources.clusters))
        for stale in sorted(layout.eds_dir.glob(f"*{SUFFIX}")):
            if stale.name[: -len(SUFFIX)] not in names:
                stale.unlink()
                changed.append(stale)
        return changed

    def _clusters_on_disk(self) -> dict[str, cluster_pb2.Cluster]:
        try:
            text = self.layout.cds_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            response = parse_discovery_response(text)
        except Exception as exc:
            # Not ours or from an incompatible version: replace it without a bridging step.
            log.warning("cannot read the current %s (%s); rewriting it", self.layout.cds_path, exc)
            return {}
        clusters: dict[str, cluster_pb2.Cluster] = {}
        for packed in response.resources:
            cluster = cluster_pb2.Cluster()
            if packed.Unpack(cluster):
                clusters[cluster.name] = cluster
        return clusters

    def _remove_temp_files(self) -> None:
        """Temp files left by a crash mid-write: never renamed, so Envoy never read them."""
        for directory in (self.layout.root, self.layout.eds_dir):
            for leftover in directory.glob(f".*{SUFFIX}.*{TEMP_SUFFIX}"):
                with contextlib.suppress(OSError):
                    leftover.unlink()
