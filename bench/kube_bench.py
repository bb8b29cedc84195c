"""What the pod-cost benchmarks share: a real apiserver with an audit log, its /metrics, and /proc figures.

Who costs the apiserver what is read from two places:

- the audit log (every request, with the user that made it), so the sidecars' or the controller's
  requests are counted apart from the benchmark's own and from kube-controller-manager's;
- the apiserver's own /metrics (`apiserver_request_total`, `apiserver_longrunning_requests`), the
  figures an operator would look at, cluster-wide.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from bench.env import REPO

AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
"""
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
CRD = REPO / "manifests" / "crd" / "vpc.modelarts.io_modelartsservices.yaml"
RBAC = REPO / "manifests" / "rbac"
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def audit_args(workdir: Path) -> tuple[list[str], Path]:
    """kube-apiserver flags for a JSON audit log of every request (metadata only: no bodies, no secrets)."""
    workdir.mkdir(parents=True, exist_ok=True)
    policy = workdir / "audit-policy.yaml"
    policy.write_text(AUDIT_POLICY)
    log = workdir / "audit.log"
    return [f"--audit-policy-file={policy}", f"--audit-log-path={log}", "--audit-log-format=json",
            "--audit-log-maxsize=2000", "--audit-log-maxbackup=1"], log


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Prometheus text format -> (name, labels, value) samples (comments skipped)."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        labels = dict(_LABEL.findall(match.group(2) or ""))
        with contextlib.suppress(ValueError):
            samples.append((match.group(1), labels, float(match.group(3))))
    return samples


def metric_sum(samples: list[tuple[str, dict[str, str], float]], name: str, **match: str) -> float:
    """Sum of a metric's samples whose labels equal `match` (a label given as '*' must only exist)."""
    total = 0.0
    for sample_name, labels, value in samples:
        if sample_name != name:
            continue
        if all((labels.get(k) is not None) if v == "*" else labels.get(k) == v for k, v in match.items()):
            total += value
    return total


@dataclass
class AuditRecord:
    audit_id: str
    user: str
    verb: str
    resource: str
    subresource: str
    namespace: str
    received: float  # epoch seconds
    code: int


def _epoch(stamp: str) -> float:
    # RFC 3339 with microseconds and a Z, e.g. 2026-12-01T23:59:59.123456Z
    import datetime as dt

    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def read_audit(path: Path) -> list[AuditRecord]:
    """One record per request (the first of its ResponseStarted/ResponseComplete/Panic events)."""
    seen: dict[str, AuditRecord] = {}
    if not path.exists():
        return []
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            audit_id = str(event.get("auditID", ""))
            if not audit_id or audit_id in seen:
                continue
            ref = event.get("objectRef") or {}
            seen[audit_id] = AuditRecord(
                audit_id=audit_id, user=str((event.get("user") or {}).get("username", "")),
                verb=str(event.get("verb", "")), resource=str(ref.get("resource", "")),
                subresource=str(ref.get("subresource", "")), namespace=str(ref.get("namespace", "")),
                received=_epoch(str(event.get("requestReceivedTimestamp") or event.get("stageTimestamp"))),
                code=int((event.get("responseStatus") or {}).get("code") or 0))
    return list(seen.values())


@dataclass
class RequestCounts:
    """One user's requests in a window, by verb and by verb/resource[/subresource]."""

    seconds: float
    by_verb: Counter[str] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.by_verb.values())

    @property
    def writes(self) -> int:
        return sum(n for verb, n in self.by_verb.items() if verb in WRITE_VERBS)

    def per_minute(self, count: float) -> float:
        return count * 60.0 / self.seconds if self.seconds > 0 else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {"seconds": round(self.seconds, 1), "total": self.total, "writes": self.writes,
                "per_minute": round(self.per_minute(self.total), 2),
                "writes_per_minute": round(self.per_minute(self.writes), 2),
                "by_verb": dict(self.by_verb), "by_kind": dict(self.by_kind)}


def count_requests(records: list[AuditRecord], user_prefix: str, start: float, end: float,
                   exclude_resources: frozenset[str] = frozenset()) -> RequestCounts:
    counts = RequestCounts(seconds=end - start)
    for record in records:
        if not record.user.startswith(user_prefix) or not start <= record.received < end:
            continue
        if record.resource in exclude_resources:
            continue
        kind = record.resource + (f"/{record.subresource}" if record.subresource else "")
        counts.by_verb[record.verb] += 1
        counts.by_kind[f"{record.verb} {kind or '(non-resource)'}"] += 1
    return counts


class ApiServer:
    """The admin's view of a KubeTestEnv: plain HTTPS calls with the admin token (not the agent's client)."""

    def __init__(self, server_url: str, token: str, ca_path: Path) -> None:
        self.url = server_url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        # Per request: REQUESTS_CA_BUNDLE in the environment would override a session's `verify`.
        self.session.trust_env = False
        self.session.verify = str(ca_path)

    def call(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
             ok: tuple[int, ...] = (200, 201), timeout: float = 30.0) -> Any:
        data = json.dumps(body) if body is not None else None
        resp = self.session.request(method, self.url + path, data=data, timeout=timeout,
                                    headers={"Content-Type": content_type} if data else None)
        if resp.status_code not in ok:
            raise RuntimeError(f"{method} {path}: HTTP {resp.status_code}: {resp.text[:300]}")
        return resp.json() if resp.content else None

    def metrics(self) -> list[tuple[str, dict[str, str], float]]:
        resp = self.session.get(self.url + "/metrics", timeout=30)
        resp.raise_for_status()
        return parse_metrics(resp.text)

    def close(self) -> None:
        self.session.close()


def watch_count(samples: list[tuple[str, dict[str, str], float]], resource: str) -> float:
    """Open WATCH requests on `resource`, from the apiserver's own gauge."""
    return metric_sum(samples, "apiserver_longrunning_requests", verb="WATCH", resource=resource)


# --- /proc figures of one process ------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def rss_mib(pid: int) -> float:
    return status_kib(pid, "VmRSS") / 1024


def smaps_rollup_mib(pid: int) -> dict[str, float]:
    """Rss, Pss, anonymous and file-backed parts (what a cgroup's memory counts is closer to Anon + page cache)."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            name, _, rest = line.partition(":")
            if name in ("Rss", "Pss", "Anonymous", "Pss_Anon", "Pss_File", "Shared_Clean", "Private_Clean",
                        "Private_Dirty"):
                out[name] = int(rest.split()[0]) / 1024
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("RssAnon:", "RssFile:", "VmHWM:", "Threads:")):
                name, _, rest = line.partition(":")
                out[name] = int(rest.split()[0]) / (1 if name == "Threads" else 1024)
    return out


def sample_idle(pid: int, seconds: float, interval: float = 1.0) -> dict[str, float]:
    """CPU share (of one core) and median RSS over a window; bounded by `seconds`."""
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    rss: list[float] = []
    while time.monotonic() - t0 < seconds:
        rss.append(rss_mib(pid))
        time.sleep(interval)
    elapsed = time.monotonic() - t0
    rss.sort()
    return {"cpu_percent": (cpu_seconds(pid) - cpu0) / elapsed * 100, "rss_mib": rss[len(rss) // 2],
            "rss_max_mib": rss[-1], "seconds": elapsed}


def stop_process(proc: subprocess.Popen[Any] | None, grace: float) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds: a measured child is stopped whatever happened to it."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def wait_until(check: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # keep polling; say what the last failure was
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})"[:500])


@contextlib.contextmanager
def stopped_at_exit(*stoppers: Any) -> Iterator[None]:
    try:
        yield
    finally:
        for stop in reversed(stoppers):
            with contextlib.suppress(Exception):
                stop()
