"""The servers `bench.xds_compare` measures, behind one interface: stage a change, then commit it.

- `OursServer`: the agent's `XdsSink` (cache + gRPC ADS server) alone in a spawned process. Staging
  builds the next `Snapshot` (the model the agent publishes); committing is `XdsSink.publish`, which
  builds and serializes the resources and wakes every stream.
- `ReferenceServer`: `xds-reference` (scripts/bench/xds-reference, go-control-plane) with its
  LinearCache or SnapshotCache. Staging uploads the very resource bytes the agent serves for that
  snapshot (encoded here by the agent's own cache) over its loopback control port, where they are
  decoded into messages; committing is `LinearCache.UpdateResources` / `SetSnapshot`.

Either way only the commit and what follows it (the push) is timed and counted as server CPU; both
servers' CPU and RSS are read from /proc of their process.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import select
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

from agent.config import AgentConfig
from agent.envoy.nodes import ALL
from agent.model import Snapshot
from agent.sinks.xds.cache import XdsCache
from agent.sinks.xds.resource import Resource
from agent.sinks.xds.types import CDS, EDS
from agent.sinks.xds.wire import varint
from bench.xds_scenario import Scenario, bench_config, bench_snapshot

REPLY_SECONDS = 120  # a stage or commit that takes longer means the server is stuck


class Server(Protocol):
    name: str
    pid: int
    port: int

    def stage(self, generation: int, changed: set[int]) -> None: ...

    def commit(self) -> None: ...

    def close(self) -> None: ...


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of `pid` (nanosecond schedstat, not the 10 ms ticks of /proc/pid/stat)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/schedstat", encoding="ascii") as f:
            total += int(f.read().split()[0])
    return total / 1e9


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- ours ------------------------------------------------------------------------------------------------

class OursServer:
    name = "ours"

    def __init__(self, scenario: Scenario) -> None:
        context = multiprocessing.get_context("spawn")
        self._control, child = context.Pipe()
        self._process = context.Process(target=serve_ours, args=(scenario, child), daemon=True)
        self._process.start()
        reply = self._reply()
        _, self.port, self.pid = reply

    def _reply(self) -> Any:
        if not self._control.poll(REPLY_SECONDS):
            raise TimeoutError("the agent's xDS server did not answer")
        reply = self._control.recv()
        if isinstance(reply, tuple) and reply[0] == "error":
            raise RuntimeError(f"the agent's xDS server failed: {reply[1]}")
        return reply

    def stage(self, generation: int, changed: set[int]) -> None:
        self._control.send(("stage", generation, sorted(changed)))
        self._reply()

    def commit(self) -> None:
        self._control.send(("commit",))
        self._reply()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._control.send(("stop",))
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)


def serve_ours(scenario: Scenario, control: Connection) -> None:
    """Process entry point: the agent's xDS sink, driven by ("stage", generation, changed) / ("commit",)."""
    from agent.sinks.xds.sink import XdsSink

    try:
        config = bench_config(scenario)
        sink = XdsSink(config.model_copy(update={"xds": config.xds.model_copy(update={"port": _free_port()})}))
        port = sink.start()
        snapshot = bench_snapshot(config, scenario, 0, set(), 1, None)
        sink.publish(snapshot)
    except Exception as exc:
        control.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    control.send(("ready", port, os.getpid()))
    staged = snapshot
    try:
        while control.poll(REPLY_SECONDS * 5):  # bounded: a harness that went quiet ends the server
            command = control.recv()
            if command[0] == "stage":
                staged = bench_snapshot(config, scenario, command[1], set(command[2]), snapshot.version + 1,
                                        snapshot)
                control.send("staged")
            elif command[0] == "commit":
                sink.publish(staged)
                snapshot = staged
                control.send("committed")
            else:
                break
    except (EOFError, OSError):
        pass
    finally:
        sink.close(grace=0)


# -- go-control-plane ------------------------------------------------------------------------------------

class ResourceBytes:
    """The agent's serialized resources for each snapshot (what its server would send), to upload."""

    def __init__(self, config: AgentConfig) -> None:
        self._config = config
        self._cache = XdsCache()
        self._sent: dict[tuple[str, str], str] = {}  # (type, name) -> version already uploaded

    def changed(self, snapshot: Snapshot) -> dict[str, list[Resource]]:
        """Per type, the resources whose content differs from what was last uploaded."""
        view = self._cache.set_snapshot(snapshot, self._config).view(ALL)
        out: dict[str, list[Resource]] = {}
        for type_url in (CDS, EDS):
            for name, resource in sorted(view.of(type_url).items()):
                if self._sent.get((type_url, name)) != resource.version:
                    out.setdefault(type_url, []).append(resource)
                    self._sent[(type_url, name)] = resource.version
        return out


def records(resources: list[Resource]) -> bytes:
    """The control port's staging format: (uvarint length, name, uvarint length, Any bytes) per resource."""
    parts = []
    for resource in resources:
        name = resource.name.encode()
        parts += [varint(len(name)), name, varint(len(resource.body)), resource.body]
    return b"".join(parts)


class ReferenceServer:
    def __init__(self, binary: Path, cache: str, scenario: Scenario, deadline_seconds: int) -> None:
        self.name = cache
        self._scenario = scenario
        self._config = bench_config(scenario)
        self._bytes = ResourceBytes(self._config)
        self._process = subprocess.Popen(
            [str(binary), "-cache", cache, "-grpc", "127.0.0.1:0", "-control", "127.0.0.1:0",
             "-deadline", f"{deadline_seconds}s"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
        assert self._process.stdout is not None
        ready, _, _ = select.select([self._process.stdout], [], [], 30)
        line = self._process.stdout.readline().decode().strip() if ready else ""
        if not line.startswith("grpc="):
            self.close()
            raise RuntimeError(f"xds-reference did not start (said {line!r}, exit {self._process.poll()})")
        addresses = dict(part.split("=", 1) for part in line.split())
        self.port = int(addresses["grpc"].rsplit(":", 1)[1])
        self._control = f"http://{addresses['control']}"
        self.pid = self._process.pid
        self._snapshot = bench_snapshot(self._config, scenario, 0, set(), 1, None)
        self._upload(self._snapshot)
        self.commit()

    def _post(self, path: str, body: bytes = b"") -> None:
        request = urllib.request.Request(self._control + path, data=body, method="POST")
        with urllib.request.urlopen(request, timeout=REPLY_SECONDS) as response:
            response.read()

    def _upload(self, snapshot: Snapshot) -> None:
        for type_url, resources in self._bytes.changed(snapshot).items():
            self._post("/stage?" + urllib.parse.urlencode({"type": type_url}), records(resources))

    def stage(self, generation: int, changed: set[int]) -> None:
        self._snapshot = bench_snapshot(self._config, self._scenario, generation, changed,
                                        self._snapshot.version + 1, self._snapshot)
        self._upload(self._snapshot)

    def commit(self) -> None:
        self._post("/commit")

    def close(self) -> None:
        if self._process.stdin is not None:
            with contextlib.suppress(OSError):
                self._process.stdin.close()  # EOF: it exits on its own
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(5)
        if self._process.stdout is not None:
            self._process.stdout.close()


def wait_gone(pid: int, seconds: float = 5.0) -> None:
    """Until `pid`'s /proc entry is gone (bounded), so the next server's figures do not overlap it."""
    deadline = time.monotonic() + seconds
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
