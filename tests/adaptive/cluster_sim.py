"""A discrete-event stand-in for one Envoy cluster in front of real-ish instances, for loop-level tests.

Requests arrive open loop (Poisson, or at a constant spacing: `paced`), Envoy picks a host the way its
least_request does (all weights equal: the less loaded of two random hosts; unequal: weight / (in flight
+ 1), as its EDF schedule does on average), each instance serves `slots` requests at a time (the rest
queue at the instance, and count as in flight, as Envoy's `rq_active` does) with service times drawn
from a distribution whose mean may change over time. The project's `FeedbackLoop` reads it as it reads
Envoy's admin: cumulative counters per host, at jittered times, 10x less often while idle. Everything
runs on a virtual clock: a minute of traffic at 150 rps takes well under a second.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from agent.adaptive.envoy_admin import ClusterHosts, HostCounters
from agent.adaptive.feedback import IDLE_SLOWDOWN, FeedbackLoop
from agent.adaptive.table import WeightTable
from agent.config import AgentConfig, parse_config

URL = "http://127.0.0.1:9901"
SERVICE = "llm"
# seconds since start -> mean service time (seconds)
MeanAt = Callable[[float], float]


def config(**adaptive_options: object) -> AgentConfig:
    return parse_config({
        "modelarts": {"iam_url": "http://127.0.0.1:9", "modelarts_url": "http://127.0.0.1:9", "project_id": "p"},
        "auth": {"mode": "token"},
        "services": [{"name": SERVICE, "service_id": "s", "listen_port": 10080,
                      "lb": {"policy": "least_request", "adaptive": True}}],
        "adaptive": adaptive_options,
    }, "test")


def constant(mean: float) -> MeanAt:
    return lambda _t: mean


def spell(normal: float, slow: float, start: float, end: float) -> MeanAt:
    """`slow` between `start` and `end`, `normal` otherwise."""
    return lambda t: slow if start <= t < end else normal


def drift(start_mean: float, end_mean: float, start: float, end: float) -> MeanAt:
    """Linear from `start_mean` at `start` to `end_mean` at `end`, flat on either side."""
    def mean(t: float) -> float:
        f = min(max((t - start) / (end - start), 0.0), 1.0)
        return start_mean + f * (end_mean - start_mean)
    return mean


@dataclass
class Instance:
    mean: MeanAt
    slots: int = 1
    dist: str = "const"  # const | exp | lognormal
    sigma: float = 0.5  # lognormal shape
    active: int = 0
    busy: int = 0
    queue: list[float] = field(default_factory=list)  # arrival times of queued requests
    total: int = 0
    success: int = 0
    timed: int = 0  # what Envoy's timing access logger counts: answers, and their times in microseconds
    timed_us: int = 0
    served: list[tuple[float, float, float]] = field(default_factory=list)  # (end, duration, service)

    def draw(self, now: float, rng: random.Random) -> float:
        m = self.mean(now)
        if self.dist == "exp":
            return rng.expovariate(1.0 / m)
        if self.dist == "lognormal":
            return m * math.exp(rng.gauss(-self.sigma ** 2 / 2, self.sigma))
        return m


class ClusterSim:
    """Hosts behind one simulated Envoy; also the `CounterReader` the feedback loop reads."""

    def __init__(self, instances: Mapping[str, Instance], rate: float | Callable[[float], float],
                 seed: int = 1, sample_interval: float = 0.05, timing: bool = True, edf: bool = False,
                 paced: bool = False) -> None:
        self.instances = dict(instances)
        self.rate = rate if callable(rate) else (lambda _t, r=rate: r)
        self.weights: dict[str, int] = {}
        self.now = 0.0
        self.rng = random.Random(seed)
        self.sample_interval = sample_interval
        self.timing = timing  # the Envoy has the agent's timing logger (per-request times to first byte)
        # Unequal weights: Envoy's own pick, an EDF schedule whose entries are re-added with weight / (in flight
        # + 1) when picked (a floored host's probes come at regular intervals), instead of a random pick with
        # those odds (the same shares on average, with Poisson gaps between one host's probes).
        self.edf = edf
        # Arrivals at a constant spacing (vegeta's constant pacer, the rig's load) instead of Poisson: at the
        # same rate a host near capacity queues far less.
        self.paced = paced
        self._deadlines: dict[str, float] = {}
        self._edf_clock = 0.0
        self.reset_at: set[str] = set()  # hosts whose counters go back to 0 at the next read (Envoy restart)
        self._events: list[tuple[float, int, str, str, float]] = []  # (time, seq, kind, host, arrival)
        self._seq = 0
        self._next_arrival: float | None = None
        self.latencies: list[tuple[float, float, str]] = []  # (arrival time, latency, host)
        self.weight_log: list[tuple[float, dict[str, int]]] = []

    # -- CounterReader -------------------------------------------------------------------------------

    @property
    def urls(self) -> tuple[str, ...]:
        return (URL,)

    def read(self, clusters: Iterable[str]) -> dict[str, ClusterHosts]:
        for host in self.reset_at:
            inst = self.instances[host]
            inst.total = inst.success = inst.timed = inst.timed_us = 0
        self.reset_at = set()
        hosts = {h: HostCounters(rq_total=i.total, rq_active=i.active, rq_success=i.success,
                                 timed=i.timed if self.timing else None,
                                 timed_us=i.timed_us if self.timing else None)
                 for h, i in self.instances.items()}
        return {URL: {SERVICE: hosts}} if SERVICE in set(clusters) else {URL: {}}

    def close(self) -> None:
        pass

    def publish(self, weights: Mapping[str, Mapping[str, int]]) -> None:
        self.weights = dict(weights.get(SERVICE, {}))
        self._deadlines = {}  # Envoy rebuilds its schedule on new weights
        self.weight_log.append((self.now, dict(self.weights)))

    # -- traffic ---------------------------------------------------------------------------------------

    def _push(self, when: float, kind: str, host: str = "", arrival: float = 0.0) -> None:
        self._seq += 1
        heapq.heappush(self._events, (when, self._seq, kind, host, arrival))

    def _schedule_arrival(self, after: float) -> None:
        rate = self.rate(after)
        if rate <= 0:
            # No traffic now: look again a little later (the rate may be a function of time).
            self._next_arrival = after + 0.01
            self._push(self._next_arrival, "tick")
            return
        self._next_arrival = after + (1.0 / rate if self.paced else self.rng.expovariate(rate))
        self._push(self._next_arrival, "arrive")

    def _pick(self) -> str:
        hosts = list(self.instances)
        weights = [self.weights.get(h, 1000) for h in hosts]
        if len(set(weights)) == 1:
            a, b = self.rng.sample(hosts, 2) if len(hosts) > 1 else (hosts[0], hosts[0])
            ia, ib = self.instances[a], self.instances[b]
            return a if ia.active < ib.active or (ia.active == ib.active and self.rng.random() < 0.5) else b
        scores = [w / (self.instances[h].active + 1) for h, w in zip(hosts, weights, strict=True)]
        if self.edf:
            for h, score in zip(hosts, scores, strict=True):
                self._deadlines.setdefault(h, self._edf_clock + self.rng.random() / score)
            host = min(hosts, key=lambda h: self._deadlines[h])
            self._edf_clock = self._deadlines[host]
            self._deadlines[host] = self._edf_clock + 1.0 / scores[hosts.index(host)]
            return host
        return self.rng.choices(hosts, weights=scores)[0]

    def _start(self, host: str, arrival: float) -> None:
        inst = self.instances[host]
        inst.busy += 1
        self._push(self.now + inst.draw(self.now, self.rng), "done", host, arrival)

    def _handle(self, kind: str, host: str, arrival: float) -> None:
        if kind == "tick":
            self._schedule_arrival(self.now)
        elif kind == "arrive":
            host = self._pick()
            inst = self.instances[host]
            inst.total += 1
            inst.active += 1
            if inst.busy < inst.slots:
                self._start(host, self.now)
            else:
                inst.queue.append(self.now)
            self._schedule_arrival(self.now)
        else:
            inst = self.instances[host]
            inst.busy -= 1
            inst.active -= 1
            inst.success += 1
            inst.timed += 1
            inst.timed_us += round((self.now - arrival) * 1e6)
            self.latencies.append((arrival, self.now - arrival, host))
            if inst.queue:
                self._start(host, inst.queue.pop(0))

    def advance_to(self, until: float) -> None:
        if self._next_arrival is None:
            self._schedule_arrival(self.now)
        while self._events and self._events[0][0] <= until:
            when, _, kind, host, arrival = heapq.heappop(self._events)
            self.now = when
            self._handle(kind, host, arrival)
        self.now = until

    def in_flight(self) -> int:
        return sum(i.active for i in self.instances.values())

    # -- running the project's loop against it ---------------------------------------------------------

    def loop(self, **adaptive_options: object) -> FeedbackLoop:
        return FeedbackLoop(config(**adaptive_options), WeightTable(), self.publish, reader=self,
                            clock=lambda: self.now)

    def run(self, loop: FeedbackLoop, until: float,
            on_read: Callable[[float, FeedbackLoop], None] | None = None) -> None:
        """Drive `loop` as its thread would (jittered reads, slower while idle) until virtual time `until`."""
        while self.now < until:
            interval = self.sample_interval * self.rng.uniform(0.5, 1.5)
            if loop.idle:
                interval *= IDLE_SLOWDOWN
            self.advance_to(min(self.now + interval, until))
            loop.step(self.now)
            if on_read is not None:
                on_read(self.now, loop)

    # -- what happened ---------------------------------------------------------------------------------

    def weight_at(self, host: str, t: float) -> int:
        weight = 1000
        for when, weights in self.weight_log:
            if when > t:
                break
            weight = weights.get(host, 1000)
        return weight

    def share(self, hosts: Iterable[str], start: float, end: float) -> float:
        wanted = set(hosts)
        window = [h for a, _, h in self.latencies if start <= a < end]
        return sum(h in wanted for h in window) / max(len(window), 1)

    def p99(self, start: float, end: float) -> float:
        values = sorted(lat for a, lat, _ in self.latencies if start <= a < end)
        return values[min(len(values) - 1, int(0.99 * len(values)))] if values else 0.0
