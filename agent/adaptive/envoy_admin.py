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

import http.client
import json
import logging
from collections.abc import Iterable, Mapping
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


class _Connection:
    """A keep-alive connection to one admin endpoint, reopened after any failure."""

    def __init__(self, url: str, timeout: float) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or parts.port is None:
            raise ValueError(f"not an http://ip:port URL: {url!r}")
        self.url = url
        self._host, self._port, self._timeout = parts.hostname, parts.port, timeout
        self._conn: http.client.HTTPConnection | None = None

    def get_json(self, path: str) -> Any:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        try:
            self._conn.request("GET", path)
            response = self._conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise AdminReadError(f"{self.url}: {type(exc).__name__}") from None
        if response.status != 200:
            raise AdminReadError(f"{self.url}{path}: HTTP {response.status}")
        try:
            return json.loads(body)
        except ValueError:
            raise AdminReadError(f"{self.url}{path}: not JSON") from None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


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
            try:
                hosts = parse_clusters(conn.get_json("/clusters?format=json"), wanted)
            except AdminReadError as exc:
                errors.append(str(exc))
                continue
            try:
                timing = parse_timing(conn.get_json(TIMING_FILTER))
            except AdminReadError:
                timing = {}  # counters only: the estimator falls back to Little's law
            answers[conn.url] = with_timing(hosts, timing)
        if not answers:
            raise AdminReadError("; ".join(errors))
        return answers

    def close(self) -> None:
        for conn in self._connections:
            conn.close()
