"""Reads per-host request counters from Envoy's admin, one or several Envoys.

Two sources, both plain admin GETs (nothing written to disk, works for any Envoy whose admin we can
reach: a sidecar's own, or gateway Envoys):

- `/clusters?format=json`: per host, requests sent, answered and in flight (Envoy's own counters);
- `/stats?filter=^modelarts.adaptive_`: per host, answered requests with a first body byte and the sum
  of their times to that byte in microseconds, two counters a stats access logger keeps on the agent's
  adaptive listeners (agent/envoy/access_log.py `adaptive_timing_logs`). Envoy exports no per-host
  latency of its own; with these the estimator has each request's exact time to first byte, not just
  Little's law over sampled in-flight counts. An Envoy without them (an older config) reads as none.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol
from urllib.parse import urlsplit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HostCounters:
    """One upstream host as an Envoy reports it (summed over Envoys when several are read)."""

    rq_total: int = 0  # requests sent to the host (counter)
    rq_active: int = 0  # requests in flight right now, queued at the host included (gauge)
    rq_success: int = 0  # counter
    rq_error: int = 0  # counter: 5xx answers, resets, connect failures
    # From the timing access logger (None: the Envoy has none for this host): 2xx answers with a body,
    # and the sum of their times from the request to the first body byte (for a stream: the first token).
    timed: int | None = None
    timed_us: int | None = None

# cluster name -> host address ("ip:port", "[v6]:port") -> counters
ClusterHosts = dict[str, dict[str, HostCounters]]


class AdminReadError(Exception):
    pass


def host_address(entry: Mapping[str, Any]) -> str | None:
    sock = (entry.get("address") or {}).get("socket_address") or {}
    ip, port = sock.get("address"), sock.get("port_value")
    if not ip or not isinstance(port, int):
        return None
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"  # the same form as Endpoint.address


def parse_clusters(data: Any, wanted: Iterable[str] | None = None) -> ClusterHosts:
    """The `cluster_statuses` of `/clusters?format=json`, reduced to the counters the estimator uses."""
    names = set(wanted) if wanted is not None else None
    result: ClusterHosts = {}
    for cluster in (data or {}).get("cluster_statuses", []) if isinstance(data, dict) else []:
        name = cluster.get("name")
        if not isinstance(name, str) or (names is not None and name not in names):
            continue
        hosts: dict[str, HostCounters] = {}
        for host in cluster.get("host_statuses", []) or []:
            address = host_address(host)
            if address is None:
                continue
            values = {stat.get("name"): stat.get("value", 0) for stat in host.get("stats", []) or []}
            hosts[address] = HostCounters(
                rq_total=_int(values.get("rq_total")), rq_active=_int(values.get("rq_active")),
                rq_success=_int(values.get("rq_success")), rq_error=_int(values.get("rq_error")))
        result[name] = hosts
    return result


TIMING_PREFIX = "modelarts.adaptive_"
# ^modelarts\.adaptive_, counters only (the timing stats are counters), used ones only: Envoy then neither walks
# its gauges and histograms nor matches the regex against counters never incremented (most of its ~340), which
# cannot be timing counters (the logger creates them by incrementing them). The same answer for ~80 instead of
# ~120 µs of Envoy's main-thread CPU per read (issue 18: these reads run 20 times a second on Envoy's main
# thread, on the worker's core in the data-plane bench, and are the p99 share of the adaptive loop's cost).
TIMING_FILTER = "/stats?format=json&usedonly&type=Counters&filter=%5Emodelarts%5C.adaptive_"
_TIMING_STATS = {"answers": "timed", "ttfb_us": "timed_us"}
CLUSTERS_PATH = "/clusters?format=json"
READS = (CLUSTERS_PATH, TIMING_FILTER)  # one read of the loop: both asked for at once


def parse_timing(data: Any) -> dict[str, dict[str, dict[str, int]]]:
    """`/stats?format=json` -> cluster -> host -> {"timed", "timed_us"}. Stat names are
    `modelarts.adaptive_answers.body.0.cluster.<cluster>.instance.<host>` and
    `modelarts.adaptive_ttfb_us.cluster.<cluster>.instance.<host>` (the logger's tags). Answers without a
    body (`body.` with an empty value) have no time and are left out; so are other kinds."""
    result: dict[str, dict[str, dict[str, int]]] = {}
    for stat in (data or {}).get("stats", []) if isinstance(data, dict) else []:
        name = stat.get("name") if isinstance(stat, dict) else None
        if not isinstance(name, str) or not name.startswith(TIMING_PREFIX):
            continue
        kind, _, rest = name[len(TIMING_PREFIX):].partition(".cluster.")
        kind, tagged, body = kind.partition(".body.")  # the answers' `body` tag: "0" when they had one
        if tagged and body != "0":
            continue
        cluster, _, host = rest.rpartition(".instance.")
        field = _TIMING_STATS.get(kind)
        if field is None or not cluster or not host:
            continue
        result.setdefault(cluster, {}).setdefault(host, {})[field] = _int(stat.get("value"))
    return result


def with_timing(hosts: ClusterHosts, timing: Mapping[str, Mapping[str, Mapping[str, int]]]) -> ClusterHosts:
    """The counters of `hosts`, with the timing counters of the hosts that have both."""
    out: ClusterHosts = {}
    for cluster, members in hosts.items():
        timed = timing.get(cluster, {})
        out[cluster] = {address: replace(c, timed=t["timed"], timed_us=t["timed_us"])
                        if (t := timed.get(address)) and "timed" in t and "timed_us" in t else c
                        for address, c in members.items()}
    return out


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


MAX_RESPONSE_BYTES = 64 << 20  # an admin answer larger than this is not Envoy's (or not one we asked for)


class _ProtocolError(Exception):
    pass


class _Connection:
    """A keep-alive HTTP/1.1 connection to one admin endpoint, reopened after any failure.

    A plain socket, not http.client: the loop reads twice every 50 ms, and http.client's header parsing
    (the email package) and chunk reading took ~0.36 ms of the agent's CPU per GET at 1,000 rps (issue 18,
    ~15 ms of CPU a second on a sidecar's core); this reads the same answer for a fraction of it. A request
    on a reused connection that gets no answer at all (Envoy closed it while idle) is sent once more on a
    fresh one, so a stale connection costs no sample.
    """

    def __init__(self, url: str, timeout: float) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or parts.port is None:
            raise ValueError(f"not an http://ip:port URL: {url!r}")
        self.url = url
        self._host, self._port, self._timeout = parts.hostname, parts.port, timeout
        self._authority = parts.netloc
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self.connects = 0  # connections opened (tests, status)

    def get_json(self, path: str) -> Any:
        answer = self.get_json_all([path])[0]
        if isinstance(answer, AdminReadError):
            raise answer
        return answer

    def get_json_all(self, paths: Sequence[str]) -> list[Any]:
        """The JSON answers to `paths`, asked for in one write (HTTP/1.1 pipelining: Envoy answers them in
        order, and its main thread takes them in one wake-up); a failed one is an AdminReadError in its place."""
        out: list[Any] = []
        for path, answer in zip(paths, self._exchange(paths), strict=True):
            if isinstance(answer, AdminReadError):
                out.append(answer)
            elif answer[0] != 200:
                out.append(AdminReadError(f"{self.url}{path}: HTTP {answer[0]}"))
            else:
                try:
                    out.append(json.loads(answer[1]))
                except ValueError:
                    out.append(AdminReadError(f"{self.url}{path}: not JSON"))
        return out

    def _exchange(self, paths: Sequence[str]) -> list[tuple[int, bytes] | AdminReadError]:
        results: list[tuple[int, bytes] | AdminReadError] = []
        retried = False
        while len(results) < len(paths):  # each turn answers one more, or retries once, or gives up
            pending, answered, reused = paths[len(results):], len(results), self._sock is not None
            try:
                sock = self._connect()
                sock.sendall(b"".join(f"GET {p} HTTP/1.1\r\nHost: {self._authority}\r\n\r\n".encode("ascii")
                                      for p in pending))
                for _ in pending:
                    results.append(self._response(sock))
                    if self._sock is None:
                        break  # the server closed after this answer: the rest on a new connection
            except (OSError, ValueError, _ProtocolError) as exc:
                untouched = len(results) == answered and not self._buf
                self.close()
                if reused and untouched and not retried and not isinstance(exc, TimeoutError):
                    retried = True  # the idle connection was gone: once more on a new one
                    continue
                results += [AdminReadError(f"{self.url}: {type(exc).__name__}")] * (len(paths) - len(results))
        return results

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.create_connection((self._host, self._port), timeout=self._timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock, self._buf = sock, bytearray()
            self.connects += 1
        return self._sock

    def _fill(self, sock: socket.socket, need: int) -> None:
        """Reads until the buffer holds `need` bytes (raises if the peer closed first)."""
        while len(self._buf) < need:
            chunk = sock.recv(65536)
            if not chunk:
                raise _ProtocolError("closed")
            self._buf += chunk
            if len(self._buf) > MAX_RESPONSE_BYTES:
                raise _ProtocolError("answer too large")

    def _take(self, sock: socket.socket, count: int) -> bytes:
        self._fill(sock, count)
        data = bytes(self._buf[:count])
        del self._buf[:count]
        return data

    def _line(self, sock: socket.socket, end: bytes = b"\r\n") -> bytes:
        while (index := self._buf.find(end)) < 0:
            self._fill(sock, len(self._buf) + 1)
        return self._take(sock, index + len(end))[:-len(end)]

    def _response(self, sock: socket.socket) -> tuple[int, bytes]:
        head = self._line(sock, b"\r\n\r\n").decode("latin-1").split("\r\n")
        version, _, rest = head[0].partition(" ")
        code = rest.partition(" ")[0]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise _ProtocolError("not HTTP/1.x")
        headers: dict[str, str] = {}
        for line in head[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip().lower()
        if "chunked" in headers.get("transfer-encoding", ""):
            body = bytearray()
            while (size := int(self._line(sock).split(b";")[0] or b"x", 16)) > 0:
                body += self._take(sock, size)
                if self._take(sock, 2) != b"\r\n" or len(body) > MAX_RESPONSE_BYTES:
                    raise _ProtocolError("bad chunk")
            while self._line(sock):  # trailers, up to the empty line
                pass
        elif "content-length" in headers:
            length = int(headers["content-length"])
            if not 0 <= length <= MAX_RESPONSE_BYTES:
                raise _ProtocolError("bad length")
            body = bytearray(self._take(sock, length))
        else:  # no framing: the answer runs to the end of the connection
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                self._buf += chunk
                if len(self._buf) > MAX_RESPONSE_BYTES:
                    raise _ProtocolError("answer too large")
            body, self._buf = self._buf, bytearray()
            headers["connection"] = "close"
        keep = headers.get("connection", "keep-alive" if version == "HTTP/1.1" else "close")
        if keep != "keep-alive":
            self.close()
        return int(code), bytes(body)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buf = bytearray()


class CounterReader(Protocol):
    """What the feedback loop reads from (an `AdminReader`, or a fake in tests)."""

    @property
    def urls(self) -> tuple[str, ...]: ...

    def read(self, clusters: Iterable[str]) -> dict[str, ClusterHosts]: ...

    def close(self) -> None: ...


class AdminReader:
    """Reads the host counters of the named clusters from every configured Envoy admin."""

    def __init__(self, urls: Iterable[str], timeout: float = 1.0) -> None:
        self._connections = [_Connection(url, timeout) for url in urls]
        if not self._connections:
            raise ValueError("no Envoy admin URL to read")

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(c.url for c in self._connections)

    def read(self, clusters: Iterable[str]) -> dict[str, ClusterHosts]:
        """URL -> its counters for the named clusters, for every Envoy that answered. Raises if none did."""
        wanted = set(clusters)
        answers: dict[str, ClusterHosts] = {}
        errors: list[str] = []
        for conn in self._connections:
            counters, stats = conn.get_json_all(READS)
            if isinstance(counters, AdminReadError):
                errors.append(str(counters))
                continue
            # Without the timing counters: counters only, the estimator falls back to Little's law.
            timing = {} if isinstance(stats, AdminReadError) else parse_timing(stats)
            answers[conn.url] = with_timing(parse_clusters(counters, wanted), timing)
        if not answers:
            raise AdminReadError("; ".join(errors))
        return answers

    def close(self) -> None:
        for conn in self._connections:
            conn.close()
