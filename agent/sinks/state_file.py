"""The state-file sink: persists the endpoint sets, so a restarted agent serves last-known-good at once.

Without it, a restart during a ModelArts outage would leave the agent with nothing to publish
until the API answers again. The file is written atomically and read back before the first poll.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from agent.model import Endpoint, Snapshot
from agent.validation import IPNetwork, Rejection, check_ip, check_port, check_schema

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


class StateFileSink:
    name = "state-file"

    def __init__(self, path: Path) -> None:
        self.path = path

    def publish(self, snapshot: Snapshot) -> None:
        data = {
            "format": FORMAT_VERSION,
            "snapshot_version": snapshot.version,
            "services": {
                name: {"service_id": svc.service_id,
                       "endpoints": [{"ip": e.ip, "port": e.port, "schema": e.schema} for e in svc.endpoints]}
                for name, svc in snapshot.services.items() if svc.synced
            },
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle, separators=(",", ":"))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def load_state(path: Path, service_ids: dict[str, str],
               allowed: tuple[IPNetwork, ...]) -> dict[str, tuple[Endpoint, ...]]:
    """Endpoints saved by a previous run, re-validated; services whose id changed are ignored."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable state file %s: %s", path, exc)
        return {}
    if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION or not isinstance(data.get("services"), dict):
        log.warning("ignoring state file %s: unknown format", path)
        return {}
    loaded: dict[str, tuple[Endpoint, ...]] = {}
    for name, entry in data["services"].items():
        if not isinstance(entry, dict) or service_ids.get(name) != entry.get("service_id"):
            continue
        endpoints = []
        for raw in entry.get("endpoints") or []:
            if not isinstance(raw, dict):
                continue
            # The file is ours, but re-validate: the allowed CIDRs may have been narrowed since.
            ip, port, schema = check_ip(raw.get("ip"), allowed), check_port(raw.get("port")), check_schema(
                raw.get("schema"))
            if isinstance(ip, Rejection) or isinstance(port, Rejection) or isinstance(schema, Rejection):
                continue
            endpoints.append(Endpoint(ip=str(ip), port=port, schema=schema))
        if endpoints:
            loaded[name] = tuple(sorted(endpoints))
    return loaded
