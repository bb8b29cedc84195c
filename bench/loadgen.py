"""Load generation (vegeta, open loop) and the Go upstream instances, both built by scripts/bench/build-tools.sh.

vegeta's attacker sends at a constant rate whatever the responses do: it starts more workers when
responses are slow, so a slow response never delays the next send (no coordinated omission), and a
request's latency is measured from the moment it was sent. `-rate=0 -max-workers N` is the closed-loop
"as fast as N connections go" mode, used only for max throughput.

Every attack is bounded by its `-duration` (and a subprocess timeout on top); everything is on loopback.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.env import LOADGEN_CPU, UPSTREAM_CPU, taskset_prefix, tool
from demo.processes import ChildProcess

REQUEST_TIMEOUT = "30s"


# --- results -------------------------------------------------------------------------------------------------


@dataclass
class Results:
    """Per-request results of one attack: send time and latency in seconds, status code, error, instance id."""

    sent: np.ndarray  # seconds since the epoch
    latency: np.ndarray  # seconds
    code: np.ndarray  # HTTP status, 0 for a transport error
    errors: list[str]
    instance: list[str]
    summary: dict[str, Any] = field(default_factory=dict)  # vegeta report -type=json (when read)

    @property
    def count(self) -> int:
        return len(self.latency)

    @property
    def ok_mask(self) -> np.ndarray:
        return (self.code >= 200) & (self.code < 300)

    @property
    def failed(self) -> int:
        return int(self.count - int(self.ok_mask.sum()))

    def percentile_ms(self, q: float, only_ok: bool = False) -> float:
        values = self.latency[self.ok_mask] if only_ok else self.latency
        if values.size == 0:
            return float("nan")
        return float(np.percentile(values, q) * 1000.0)

    def percentiles_ms(self) -> dict[str, float]:
        return {name: round(self.percentile_ms(q), 3) for name, q in
                (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9), ("max", 100.0))}

    def achieved_rate(self) -> float:
        if self.count < 2:
            return 0.0
        span = float(self.sent.max() - self.sent.min())
        return (self.count - 1) / span if span > 0 else 0.0

    def per_instance(self) -> Counter[str]:
        return Counter(i for i, ok in zip(self.instance, self.ok_mask, strict=True) if ok and i)

    def failures_by_kind(self) -> Counter[str]:
        kinds: Counter[str] = Counter()
        for code, error in zip(self.code.tolist(), self.errors, strict=True):
            if 200 <= code < 300:
                continue
            kinds[f"HTTP {code}" if code else _short_error(error)] += 1
        return kinds

    @classmethod
    def concat(cls, parts: Sequence[Results]) -> Results:
        return cls(sent=np.concatenate([p.sent for p in parts]) if parts else np.zeros(0),
                   latency=np.concatenate([p.latency for p in parts]) if parts else np.zeros(0),
                   code=np.concatenate([p.code for p in parts]) if parts else np.zeros(0, dtype=int),
                   errors=[e for p in parts for e in p.errors], instance=[i for p in parts for i in p.instance])


def _short_error(error: str) -> str:
    for marker in ("connection refused", "connection reset", "EOF", "timeout", "broken pipe"):
        if marker in error:
            return marker
    return error[-60:] or "error"


def _parse_timestamp(text: str) -> float:
    # RFC 3339 with nanoseconds: "2026-11-25T08:42:26.290917396Z" (or with an offset).
    import datetime

    main, _, rest = text.partition(".")
    frac = ""
    tz = "Z"
    for i, ch in enumerate(rest):
        if not ch.isdigit():
            frac, tz = rest[:i], rest[i:]
            break
    else:
        frac = rest
    base = datetime.datetime.fromisoformat(main + ("+00:00" if tz == "Z" else tz))
    return base.timestamp() + (float("0." + frac) if frac else 0.0)


def parse_results(encoded_json: Path) -> Results:
    sent: list[float] = []
    latency: list[float] = []
    codes: list[int] = []
    errors: list[str] = []
    instances: list[str] = []
    with encoded_json.open() as handle:
        for line in handle:
            if not line.strip():
                continue
            rec = json.loads(line)
            sent.append(_parse_timestamp(rec["timestamp"]))
            latency.append(rec["latency"] / 1e9)
            codes.append(int(rec.get("code") or 0))
            errors.append(rec.get("error") or "")
            headers = rec.get("headers") or {}
            value = headers.get("X-Instance-Id") or headers.get("x-instance-id") or [""]
            instance = value[0] if isinstance(value, list) and value else ""
            if not instance and rec.get("body"):
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    instance = json.loads(base64.b64decode(rec["body"]))["instance_id"]
            instances.append(instance)
    order = np.argsort(np.array(sent)) if sent else np.zeros(0, dtype=int)
    return Results(sent=np.array(sent)[order], latency=np.array(latency)[order],
                   code=np.array(codes, dtype=int)[order], errors=[errors[i] for i in order],
                   instance=[instances[i] for i in order])


# --- attacks -------------------------------------------------------------------------------------------------


@dataclass
class Target:
    url: str
    method: str = "GET"
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None

    def as_json(self) -> str:
        entry: dict[str, Any] = {"method": self.method, "url": self.url,
                                 "header": {k: [v] for k, v in self.headers.items()}}
        if self.body is not None:
            entry["body"] = base64.b64encode(self.body).decode()
        return json.dumps(entry)


class Attack:
    """One `vegeta attack` run in the background; `wait()` returns its parsed results.

    Several targets are used in turn (vegeta's targeter is a round robin over them): that is how the
    naive client-side round robin over instance IPs is driven.
    """

    def __init__(self, name: str, targets: Sequence[Target], workdir: Path, rate: float, duration: float,
                 max_workers: int | None = None, workers: int | None = None, cpu: str | None = LOADGEN_CPU,
                 per_request: bool = True) -> None:
        self.name = name
        self.workdir = workdir
        self.duration = duration
        self.per_request = per_request
        self.targets_path = workdir / f"{name}.targets"
        self.out_path = workdir / f"{name}.bin"
        self.targets_path.write_text("".join(t.as_json() + "\n" for t in targets))
        argv = [tool("vegeta"), "attack", "-format=json", f"-targets={self.targets_path}",
                f"-duration={duration:.3f}s", f"-timeout={REQUEST_TIMEOUT}", f"-output={self.out_path}"]
        if rate > 0:
            argv.append(f"-rate={rate:g}/1s")
        else:
            argv += ["-rate=0", f"-max-workers={max_workers or 64}"]
        if workers is not None:
            argv.append(f"-workers={workers}")
        elif rate <= 0:
            argv.append(f"-workers={max_workers or 64}")
        self.child = ChildProcess(f"vegeta-{name}", [*(taskset_prefix(cpu) if cpu else []), *argv], workdir)
        self.started_at = 0.0

    def start(self) -> Attack:
        self.started_at = time.time()
        self.child.start()
        return self

    def wait(self) -> Results:
        proc = self.child.proc
        assert proc is not None
        try:
            code = proc.wait(timeout=self.duration + 60)
        except subprocess.TimeoutExpired:
            self.child.kill()
            raise RuntimeError(f"vegeta {self.name} did not finish in time") from None
        if code != 0:
            raise RuntimeError(f"vegeta {self.name} exited with {code}:\n{self.child.tail()}")
        summary = json.loads(subprocess.run([tool("vegeta"), "report", "-type=json", str(self.out_path)],
                                            capture_output=True, text=True, check=True, timeout=120).stdout)
        if not self.per_request:
            results = Results(sent=np.zeros(0), latency=np.zeros(0), code=np.zeros(0, dtype=int), errors=[],
                              instance=[])
        else:
            encoded = self.out_path.with_suffix(".jsonl")
            with encoded.open("wb") as handle:
                subprocess.run([tool("vegeta"), "encode", "-to=json", str(self.out_path)], stdout=handle,
                               check=True, timeout=300)
            results = parse_results(encoded)
            encoded.unlink()
        results.summary = summary
        self.out_path.unlink(missing_ok=True)
        return results

    def interrupt(self) -> None:
        """End the attack early; vegeta stops sending and still writes every result (then call wait())."""
        proc = self.child.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGINT)

    def stop(self) -> None:
        self.child.stop()


def attack(name: str, targets: Sequence[Target], workdir: Path, rate: float, duration: float,
           **kwargs: Any) -> Results:
    return Attack(name, targets, workdir, rate, duration, **kwargs).start().wait()


# --- Go upstream instances -----------------------------------------------------------------------------------


class Upstream:
    """A Go inference-instance stand-in (scripts/bench/go/upstream) on its own loopback address."""

    def __init__(self, instance_id: str, ip: str, workdir: Path, service_ms: float = 0.0,
                 concurrency: int = 0, cpu: str | None = UPSTREAM_CPU) -> None:
        self.instance_id = instance_id
        self.ip = ip
        self.port = 0
        self._ready = workdir / f"upstream-{instance_id}.addr"
        self._ready.unlink(missing_ok=True)
        argv = [tool("upstream"), "-addr", f"{ip}:0", "-id", instance_id, "-service-ms", f"{service_ms:g}",
                "-concurrency", str(concurrency), "-ready-file", str(self._ready)]
        self.child = ChildProcess(f"upstream-{instance_id}", [*(taskset_prefix(cpu) if cpu else []), *argv],
                                  workdir)

    def start(self) -> Upstream:
        self.child.start()
        self.child.wait_until(self._ready.exists, 10, "upstream listening")
        self.port = int(self._ready.read_text().strip().rsplit(":", 1)[1])
        return self

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def kill(self) -> None:
        """Like the instance's process dying: SIGKILL, the kernel resets its connections."""
        self.child.kill()

    def stop(self) -> None:
        self.child.stop()
