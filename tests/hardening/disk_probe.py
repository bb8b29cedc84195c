"""Runs inside a private mount namespace (see test_disk_faults.py): the file sink on a real, tiny tmpfs
that fills up, then on the same tmpfs remounted read-only. Prints what happened as JSON."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from envoy.config.endpoint.v3 import endpoint_pb2

from agent.envoy.serialize import parse_discovery_response
from agent.model import Endpoint
from agent.sinks.envoy.files import EnvoyFileSink
from tests.envoy.harness import make_config, make_snapshot

SERVICES = [{"name": "alpha", "listen_port": 8001}, {"name": "beta", "listen_port": 8002}]


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def endpoints(count: int) -> dict[str, list[Endpoint]]:
    return {"alpha": [Endpoint(f"10.0.{i // 250}.{i % 250 + 1}", 8080) for i in range(count)],
            "beta": [Endpoint("10.1.0.1", 8080)]}


def publish(sink: EnvoyFileSink, config: Any, version: int, count: int) -> str | None:
    """None if written, else the errno name of the failure."""
    try:
        sink.publish(make_snapshot(config, endpoints(count), version=version))
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return None


def main(mount_point: Path) -> dict[str, Any]:
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)], check=True)
    root = mount_point / "envoy"
    config = make_config(root, 9901, SERVICES)
    sink = EnvoyFileSink(config)
    report: dict[str, Any] = {"first": publish(sink, config, 1, 2)}
    good = files(root)
    filler = mount_point / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)  # unbuffered: fill the disk to the last block
    try:
        for _ in range(1_000):  # bounded: 256 KiB is 64 blocks
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        report["filled_with"] = errno.errorcode.get(exc.errno or 0)
    finally:
        os.close(fd)
    # A bigger EDS file than before: it cannot fit.
    report["full"] = publish(sink, config, 2, 300)
    report["unchanged_when_full"] = files(root) == good
    report["temp_files_when_full"] = [p.name for p in root.rglob(".*")]
    filler.unlink()
    report["after_space_freed"] = publish(sink, config, 3, 300)
    recovered = files(root)
    assignment = endpoint_pb2.ClusterLoadAssignment()
    parse_discovery_response(recovered["eds/alpha.json"].decode()).resources[0].Unpack(assignment)
    report["recovered_alpha_endpoints"] = len(assignment.endpoints[0].lb_endpoints)
    subprocess.run(["mount", "-o", "remount,ro", str(mount_point)], check=True)
    report["read_only"] = publish(sink, config, 4, 5)
    report["unchanged_when_read_only"] = files(root) == recovered
    report["all_parse"] = all(len(parse_discovery_response(data.decode()).resources) > 0
                              for data in files(root).values())
    return report


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))))
