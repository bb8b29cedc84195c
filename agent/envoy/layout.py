"""Where file mode keeps its xDS files, and the `ConfigSource`s that point Envoy at them.

    <output_dir>/cds.json           clusters        (watched directory: <output_dir>)
    <output_dir>/lds.json           listeners       (watched directory: <output_dir>)
    <output_dir>/eds/<cluster>.json one ClusterLoadAssignment per cluster (watched: <output_dir>/eds)

Envoy re-reads a `path_config_source` file when any file is renamed into its watched directory.
EDS files sit in their own directory so that endpoint churn does not make Envoy re-read CDS/LDS.
Paths are absolute because Envoy's working directory is not ours.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from envoy.config.core.v3 import base_pb2, config_source_pb2

from agent.config import EnvoyConfig

CDS_FILE = "cds.json"
LDS_FILE = "lds.json"
EDS_DIR = "eds"
SUFFIX = ".json"
TEMP_SUFFIX = ".tmp"


@dataclass(frozen=True)
class FileLayout:
    root: Path

    @classmethod
    def for_config(cls, envoy: EnvoyConfig) -> FileLayout:
        # abspath, not resolve(): keep a symlinked output dir as the user named it.
        return cls(Path(os.path.abspath(envoy.output_dir)))

    @property
    def cds_path(self) -> Path:
        return self.root / CDS_FILE

    @property
    def lds_path(self) -> Path:
        return self.root / LDS_FILE

    @property
    def eds_dir(self) -> Path:
        return self.root / EDS_DIR

    def eds_path(self, cluster: str) -> Path:
        return self.eds_dir / f"{cluster}{SUFFIX}"

    def cds_source(self) -> config_source_pb2.ConfigSource:
        return _path_source(self.cds_path)

    def lds_source(self) -> config_source_pb2.ConfigSource:
        return _path_source(self.lds_path)

    def eds_source(self, cluster: str) -> config_source_pb2.ConfigSource:
        return _path_source(self.eds_path(cluster))


def _path_source(path: Path) -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        path_config_source=config_source_pb2.PathConfigSource(
            path=str(path),
            watched_directory=base_pb2.WatchedDirectory(path=str(path.parent)),
        ),
        resource_api_version=config_source_pb2.ApiVersion.V3,
    )
