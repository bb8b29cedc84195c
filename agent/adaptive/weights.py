"""Estimates -> bounded integer `load_balancing_weight`s for one service.

1. Capacities (`Estimate.capacity`, requests/s). Hosts within `equal_tolerance` of the best are
   treated as the best: estimates are noisy, and identical instances must get identical weights
   (Envoy then keeps its unweighted least-request pick, which is the best policy for them).
2. Target shares for the current demand by the square-root rule, the optimal static split of Poisson
   traffic over parallel single-server queues (minimum mean response time):
       share_i ∝ μ_i - √μ_i · (Σμ - λ) / Σ√μ   over the hosts worth using; hosts whose value
   would be ≤ 0 get none. At low load only the fast hosts are worth using; as demand nears the total
   capacity the slow ones get their part. Near or over capacity: shares ∝ capacity.
3. Weights: heaviest = `max_weight`, none below `max_weight / max_weight_ratio` (the floor keeps a
   trickle of probe traffic on every host, so a recovered host is noticed).

Envoy's weighted least_request divides each weight by (in-flight + 1) at pick time, so these weights set
the long-run split while Envoy still reacts to momentary queues.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace

from agent.adaptive.estimator import Estimate, queue_latency, service_time
from agent.adaptive.stream_tail import tail_split

MAX_WEIGHT = 1000


@dataclass(frozen=True)
class WeightParams:
    max_weight: int = MAX_WEIGHT
    max_ratio: float = 100.0  # heaviest / lightest
    equal_tolerance: float = 0.5  # capacities within 1.5x of the best count as the best
    overload: float = 0.95  # demand above this share of the total capacity: split by capacity
    min_change: float = 0.25  # a weight must move by this fraction (or to/from the floor) to republish
    max_rise: float = 2.0  # a weight may at most double per update: probe back in gently
    rise_confirmations: int = 3  # consecutive updates that must call for a rise before it happens
    probe_band: float = 3.0  # weights under this many floors are set to the floor
    # The probe budget: hosts on the floor share at most this part of the requests, however many they
    # are, so probes cannot set a p99 (issue 17: two floored hosts at 1/100 took 1.1 % and set it). Envoy's
    # pick divides weights by (in flight + 1) and floored hosts are idle, so they get more than their
    # weight share (up to ~2x in the simulator at 150 rps): the floor weights are set for half the budget.
    probe_share: float = 0.005
    # A host on the floor whose last few requests (Estimate.recent) show it recovered climbs at once to
    # this part of the heaviest weight, then `climb_rise`x per update: at its fair weight one update later,
    # if the second of requests that tenth brings (~3 % of the service's) still counts it among the best (it
    # falls at once if not). x4 took two updates (100 -> 400 -> 1000) for no more evidence.
    climb_start: float = 0.1
    climb_rise: float = 10.0
    # A host the split would give less than this share of the requests goes to the floor: it adds little
    # capacity, and a slow host's few percent of the requests are exactly what sets the p99.
    min_share: float = 0.02
    # A host failing this share of its answers more than the service's best host is not snapped to the
    # best (step 1): the top group's tolerance is for noisy latency estimates, and a 30 % failure rate,
    # which only costs 1/0.7 in latency per success, hid inside it (the breaker mix: 1.36x least_request's
    # errors). Out of the group the split gives it what its goodput capacity (successes/s of work) earns.
    error_tolerance: float = 0.05
    # The tail rule (see `tail_floored`): a host the split gives under this share of the requests goes to the
    # floor when the others, given its requests too, would still answer in at most 1 / `tail_margin` of its
    # own service time. Its few percent sit above everything else and are the p99 (5 x the 1 % a p99 hides).
    tail_share: float = 0.05
    tail_margin: float = 2.0

    @property
    def floor(self) -> int:
        return max(1, math.ceil(self.max_weight / self.max_ratio))


def snap_capacities(capacity: Mapping[str, float], tolerance: float,
                    top: Collection[str] = (), below: Collection[str] = ()) -> dict[str, float]:
    """Hosts close to the best count as the best. Hysteresis: a host in `top` (the best until now) only
    leaves at twice the tolerance, so a host near the line does not flap between the two. Hosts in `below`
    (the drift detector found them slower than the others, agent/adaptive/drift.py) keep their own."""
    best = max(capacity.values(), default=0.0)
    return {host: best if host not in below
            and value * (1.0 + (2 * tolerance if host in top else tolerance)) >= best else value
            for host, value in capacity.items()}


def square_root_split(capacity: Mapping[str, float], demand: float, overload: float = 0.95) -> dict[str, float]:
    """Share of `demand` (requests/s) per host; the shares sum to 1 (all 0 if there are no hosts)."""
    hosts = sorted(capacity, key=lambda h: (-capacity[h], h))
    total = sum(capacity.values())
    if not hosts or total <= 0:
        return dict.fromkeys(hosts, 0.0)
    if demand >= overload * total:
        return {h: capacity[h] / total for h in hosts}
    demand = max(demand, 1e-9)
    used = list(hosts)
    while True:
        mu = sum(capacity[h] for h in used)
        roots = sum(math.sqrt(capacity[h]) for h in used)
        slack = (mu - demand) / roots
        alloc = {h: capacity[h] - math.sqrt(capacity[h]) * slack for h in used}
        if len(used) == 1 or alloc[used[-1]] > 0:
            break
        used.pop()  # the slowest host is not worth using at this demand
    spread = sum(max(a, 0.0) for a in alloc.values()) or 1.0
    return {h: max(alloc.get(h, 0.0), 0.0) / spread for h in hosts}


def speed_split(capacity: Mapping[str, float], first: Mapping[str, float], demand: float,
                overload: float = 0.95) -> dict[str, float]:
    """Share of `demand` per host for streams: host i holds a stream for a while (capacity `capacity[i]`
    streams/s, its slots / the time a stream holds one) and answers its first byte `first[i]` seconds after a
    slot is free. The split minimises the mean time to first byte with each host's slot wait as an M/M/1 queue
    at its slot capacity (a host's slots taken together as one server: it overstates the wait, so it errs
    towards using every host's slots):

        minimise sum_i  lambda_i * (first_i - 1/mu_i + 1/(mu_i - lambda_i))
        ->  lambda_i = mu_i - sqrt(mu_i / (nu - first_i + 1/mu_i)),  or 0 when that is <= 0,

    `nu` (the marginal cost) set by bisection so that the shares add up to the demand. With all first-byte
    times equal it is the square-root split; a host that is slow only to its first byte gets streams once the
    others' slots are busy enough that waiting for one costs more than its slowness (at a low demand none, near
    the pool's capacity nearly its part). Demand >= `overload` x the total capacity: shares by capacity."""
    hosts = sorted(capacity)
    total = sum(capacity.values())
    if not hosts or total <= 0:
        return dict.fromkeys(hosts, 0.0)
    if demand >= overload * total:
        return {h: capacity[h] / total for h in hosts}

    def alloc(nu: float) -> dict[str, float]:
        out = {}
        for h in hosts:
            mu, room = capacity[h], nu - first[h] + 1.0 / capacity[h]
            out[h] = max(mu - math.sqrt(mu / room), 0.0) if room > 0 else 0.0
        return out

    low, high = min(first[h] for h in hosts), max(first[h] for h in hosts) + 1.0
    for _ in range(200):  # bounded: double the upper end until it serves the demand
        if sum(alloc(high).values()) >= demand:
            break
        high *= 2
    for _ in range(60):
        mid = (low + high) / 2
        if sum(alloc(mid).values()) >= demand:
            high = mid
        else:
            low = mid
    shares = alloc(high)
    spread = sum(shares.values()) or 1.0
    return {h: v / spread for h, v in shares.items()}


def tail_floored(estimates: Mapping[str, Estimate], shares: Mapping[str, float], demand: float,
                 params: WeightParams, low: Collection[str] = ()) -> set[str]:
    """Hosts to floor for the tail's sake, though the split gives them a share (issue 17, 90 % load, one slow
    instance of four). The square-root split minimises the mean: it gives a slow host a few percent of the
    requests once the others' queueing, as the model predicts it, costs more than the host's slowness. Those
    few percent are each slower than anything the others answer, so they are the p99. When the others' own
    answers say they queue less than the model's Poisson arrivals would (paced load: 3 instances at 97 %
    answer in ~1.2x their service time), the split still hands the slow host ~2-5 % and the p99 is its
    service time (4x the others'), while the others could take those requests at a fraction of it.

    A host the split gives less than `tail_share` of the requests (but at least `min_share`, under which it is
    floored anyway) is floored when the other used hosts, its requests shared among them in proportion to
    theirs, would answer in at most 1/`tail_margin` of its service time: the mean time at each, from its own
    service time (`service_time`, the M/D/1 inversion of its latency at its throughput) at the new rate.
    Slowest first, as long as the rule holds. With Poisson arrivals at 90 % load the same hosts would queue
    ~20x their service time to take it, and the host keeps its share (the model's own prediction decides).
    Hysteresis: a host on the floor now (`low`) leaves it only once the others would be slower than its service
    time itself (margin 1), so noise near the line does not climb it back and floor it again."""
    total = sum(shares.values())
    if total <= 0 or demand <= 0:
        return set()
    rate = {h: demand * v / total for h, v in shares.items()}
    service = {h: service_time(e.latency, e.throughput) for h, e in estimates.items() if h in rate}
    used = {h for h, r in rate.items() if r > 0 and h in service}
    out: set[str] = set()
    for host in sorted(used, key=lambda h: (shares[h], h)):
        share = shares[host] / total
        if share < params.min_share:
            continue  # floored anyway (shares_to_weights)
        if share >= params.tail_share:
            break
        rest = used - out - {host}
        carried = sum(rate[h] for h in rest)
        if carried <= 0:
            break
        moved = rate[host] + sum(rate[h] for h in out)
        worst = max(queue_latency(service[h], rate[h] * (1.0 + moved / carried)) for h in rest)
        if worst * (1.0 if host in low else params.tail_margin) > service[host]:
            break
        out.add(host)
    return out


def shares_to_weights(shares: Mapping[str, float], params: WeightParams,
                      floored: Collection[str] = ()) -> dict[str, int]:
    """Heaviest share -> `max_weight`; anything under `probe_band` x the floor -> the floor (probe traffic
    only), so a host hovering just above the floor does not cause rewrites for nothing; `floored` too."""
    top = max(shares.values(), default=0.0)
    if top <= 0:
        return dict.fromkeys(shares, params.max_weight)
    weights = {h: min(params.max_weight, round(params.max_weight * s / top)) for h, s in shares.items()}
    band = min(params.probe_band * params.floor, params.max_weight)
    total = sum(shares.values()) or 1.0
    floored = {h for h, w in weights.items() if w < band or shares[h] / total < params.min_share or h in floored}
    probe = probe_weight(sum(w for h, w in weights.items() if h not in floored), len(floored), params)
    return {h: probe if h in floored else w for h, w in weights.items()}


def probe_weight(others: float, floored: int, params: WeightParams) -> int:
    """Weight of each of `floored` hosts so that together they get half of `probe_share` next to
    hosts whose weights sum to `others` (never above the floor, never below 1)."""
    if floored == 0 or others <= 0:
        return params.floor
    nominal = params.probe_share / 2
    return max(1, min(params.floor, math.floor(nominal * others / (floored * (1 - nominal)))))


def target_weights(estimates: Mapping[str, Estimate], params: WeightParams,
                   top: Collection[str] = (), below: Collection[str] = (),
                   floored: Collection[str] = (), stream_hold: float | None = None,
                   low: Collection[str] = ()) -> dict[str, int]:
    """The weights these estimates call for, before smoothing (`top`: hosts at the heaviest weight now;
    `below`: hosts found slower than the others, which are not snapped to the best; `floored`: hosts that
    get probe traffic only, whatever their estimates say; `stream_hold`: the service's requests are streams
    that hold a host this long (estimator.stream_hold): split by slots, `stream_shares`; `low`: hosts on the
    probe floor now, for the tail rule's hysteresis, `tail_floored`)."""
    if not estimates:
        return {}
    # Failing more than the others: when every host fails alike (a bad request mix), none is singled out.
    least = min(e.failed_share for e in estimates.values())
    below = set(below) | {h for h, e in estimates.items() if e.failed_share - least >= params.error_tolerance}
    demand = sum(e.rate for e in estimates.values())
    if stream_hold is not None:
        return shares_to_weights(stream_shares(estimates, demand, params, stream_hold, top, below), params, floored)
    # Goodput (successes/s it could serve), not answers: a failing host must not look as able as a healthy one.
    goodput = {h: e.goodput_capacity for h, e in estimates.items()}
    capacity = snap_capacities(goodput, params.equal_tolerance, top, below)
    shares = square_root_split(capacity, demand, params.overload)
    return shares_to_weights(shares, params, set(floored) | tail_floored(estimates, shares, demand, params, low))


def stream_shares(estimates: Mapping[str, Estimate], demand: float, params: WeightParams, hold: float,
                  top: Collection[str] = (), below: Collection[str] = ()) -> dict[str, float]:
    """Streaming hosts (issue 16): a host's capacity is its slots, not 1 / its time to first byte. A stream
    holds a slot for its whole length, so a host 10x slower to its first token but with the same slots
    carries a quarter of a 4-host pool's streams; split by its first-byte time alone (as a single server whose
    service is that time) it was floored at any demand, and the other three then ran at ~80 % of their slots
    with streams waiting for one (tests/adaptive/test_streams_uneven_ttft.py). Slots: the most streams seen in
    flight at once on any host of the service (the hosts of a service run the same server; a lower bound, so
    the pool looks busier than it is and every host's slots are counted on sooner). Capacity = slots / the
    time a stream holds one (its own, or the service's `hold` while it has too few answers: on the floor);
    speed = the time to first byte without the slot wait (the estimate: see estimator.base_latency). Both
    snapped to the best within the top group's tolerance (identical hosts seen through noise stay equal),
    then `speed_split`, then the tail rule (`stream_tail.tail_split`)."""
    slots = max(max(e.peak_active for e in estimates.values()), 1.0)
    capacity = snap_capacities({h: slots / (e.hold or hold) for h, e in estimates.items()},
                               params.equal_tolerance, top, below)
    # Speed: each host's time to first byte without the slot wait (its lowest recent read, never below the
    # best estimate), also for a host not yet judged a streaming one on its own answers: slot waits are load and
    # differ by chance between identical hosts. As a "bigger is better" figure, so the same snapping applies.
    best = min(e.latency for e in estimates.values())
    first = {h: e.latency if e.base is None else min(e.latency, max(e.base, best)) for h, e in estimates.items()}
    speed = snap_capacities({h: 1.0 / v for h, v in first.items()}, params.equal_tolerance, top, below)
    shares = speed_split(capacity, {h: 1.0 / v for h, v in speed.items()}, demand, params.overload)
    # For the TTFT p99, not its mean: a host many times slower to its first token gets only the streams the
    # others cannot carry without waiting for a slot (agent/adaptive/stream_tail.py).
    return tail_split(shares, estimates, demand, hold)


def smooth(current: Mapping[str, int], target: Mapping[str, int], params: WeightParams,
           may_rise: Collection[str] | None = None, climbing: Collection[str] = ()) -> dict[str, int]:
    """Fall at once (protect latency), rise at most `max_rise`x per update (probe back in gently), and
    only hosts in `may_rise` (None: all) rise at all. Hosts `climbing` back from the floor on recent
    evidence go to `climb_start` of the heaviest weight at once, then rise `climb_rise`x per update.

    A host new to `current` starts at the target. Hosts gone from `target` are dropped.
    """
    out: dict[str, int] = {}
    for host, want in target.items():
        have = current.get(host)
        if have is None or want <= have:
            out[host] = want
        elif host in climbing:
            out[host] = min(want, max(math.ceil(have * params.climb_rise),
                                      math.ceil(params.climb_start * params.max_weight)))
        elif may_rise is not None and host not in may_rise:
            out[host] = have
        else:
            out[host] = min(want, math.ceil(have * params.max_rise))
    return out


def material_change(published: Mapping[str, int], proposed: Mapping[str, int], params: WeightParams) -> bool:
    """Worth an EDS rewrite: hosts differ, a weight reaches or leaves the floor, or moves by `min_change`."""
    if set(published) != set(proposed):
        return True
    for host, new in proposed.items():
        old = published[host]
        if old == new:
            continue
        if params.floor in (old, new) or params.max_weight in (old, new):
            return True
        if abs(new - old) >= params.min_change * max(old, new):
            return True
    return False


class ServiceWeights:
    """The weights of one service as last published, and the rules for changing them."""

    def __init__(self, params: WeightParams | None = None) -> None:
        self.params = params or WeightParams()
        self.published: dict[str, int] = {}
        self._rising: dict[str, int] = {}  # host -> consecutive updates whose target was above its weight
        self.climbing: set[str] = set()  # hosts back from the floor on recent evidence, not yet at the target
        self.lifted: set[str] = set()  # hosts that climbed at the last update (the loop trusts their recent view)
        self.evidence: dict[str, str] = {}  # low host -> "recent" (floored) or "fast": the view it is judged by
        # host -> its answer count (Estimate.answers) when its weight last changed: a weight rises again only
        # after news from the host at the weight it has. Unary answers come within milliseconds, so this costs
        # nothing there; a token stream answers (and is timed) only when it ends, and without this rule a
        # slow host starved of evidence by long streams climbed on its prior alone, doubling before any of
        # the streams the rise sent it could say it was slow (the uneven streams cell).
        self._answers_at_change: dict[str, int] = {}

    def propose(self, estimates: Mapping[str, Estimate], all_equal: bool = False,
                below: Collection[str] = (), recovered: Mapping[str, float | None] | None = None,
                relapsed: Collection[str] = (), hold: Collection[str] = (),
                stream_hold: float | None = None) -> dict[str, int] | None:
        """New weights worth publishing, or None to keep the current ones. Call once per update interval.

        `all_equal`: too little evidence yet to tell hosts apart (every host at the heaviest weight).
        `below`: hosts the drift detector found slower than the others (judged by their own capacity).
        `recovered`: floored hosts whose probes a sequential test judges (drift.RecoveryTest), with the
        latency of the answers that called one back, or None while it has not: judged by that, not by their
        recent view (the mean of ~3 answers, which a slow host with exponential times often wins by chance).
        `relapsed`: climbing hosts whose later answers undid that call: back to the floor at once. `hold`:
        climbing hosts whose later answers have not added to it: no higher for now. `stream_hold`: see
        `target_weights`.
        """
        recovered = recovered or {}
        params = self.params
        top = {h for h, w in self.published.items() if w >= params.max_weight}
        # Hosts on the floor, or climbing back from it, are judged by their last few requests when those
        # look better than the slow horizon: waiting for it to forget a bad spell took ~30 s (issue 17).
        band = params.probe_band * params.floor
        # Floored hosts by their last few requests, other low ones by their fast horizon; and only when that
        # looks as good as the best (a lucky few requests of a slow host must not lift it).
        # Hosts still in the service only: one floored and then removed (scale-in, a replaced instance) made
        # every later update fail on it (KeyError), and the service's weights stayed frozen.
        low = {h for h, w in self.published.items()
               if h in estimates and w < params.climb_start * params.max_weight and h not in self.climbing}
        best = min((e.latency for e in estimates.values()), default=0.0)
        self.evidence = {h: "recent" if self.published[h] < band else "fast" for h in low if h in estimates}
        judged = dict(estimates)
        for h, kind in self.evidence.items():
            e = estimates[h]
            view = e.recent if kind == "recent" else e.fast
            if kind == "recent" and h in recovered:
                view = recovered[h]
            if kind == "recent" and view is not None and e.failed_share > 0:
                # The recent view times the answers that had a body: charge the failures too, or a
                # floored, failing host would look recovered and climb back at every update.
                view = view / max(1.0 - e.failed_share, 1e-3)
            if view is not None and view < e.latency and view <= (1 + params.equal_tolerance) * best:
                judged[h] = replace(e, latency=view)
        # Climbing hosts are presumed back (their recent requests said so): they join the best at the
        # top group's tolerance, or fresh, thin evidence would stall them below it.
        target = dict.fromkeys(estimates, params.max_weight) if all_equal \
            else target_weights(judged, params, top | (self.climbing - set(relapsed)), below, floored=relapsed,
                                stream_hold=stream_hold, low={h for h, w in self.published.items() if w < band})
        # A rise must be called for in consecutive updates: one noisy estimate does not move a weight up
        # (falls are never delayed: they protect latency).
        self._rising = {h: self._rising.get(h, 0) + 1 for h, w in target.items()
                        if h in self.published and w > self.published[h]
                        and (w >= self.published[h] * (1 + self.params.min_change) or w >= self.params.max_weight)}
        may_rise = {h for h, n in self._rising.items() if n >= params.rise_confirmations}
        # A climb goes on only while the host still counts as one of the best; otherwise the usual rules.
        self.climbing = {h for h in self.climbing if target.get(h, 0) >= params.max_weight and h not in relapsed}
        climbing = self.climbing | {h for h in low if judged[h] is not estimates[h]
                                    and target.get(h, 0) > self.published.get(h, 0)}
        proposed = smooth(self.published, target, params, may_rise, climbing)
        for h in hold:
            if h in proposed and h in self.published:
                proposed[h] = min(proposed[h], self.published[h])
        for h, w in proposed.items():
            if h in self.published and w > self.published[h] and h in estimates \
                    and estimates[h].answers <= self._answers_at_change.get(h, -1):
                proposed[h] = self.published[h]  # no news since its last change: no rise yet
        self.lifted = {h for h in climbing - self.climbing if proposed[h] > self.published[h]}
        # A climb ends at the heaviest weight, or as soon as the host's weight falls (it is not re-judged
        # by its recent view meanwhile: the requests the climb brings decide).
        self.climbing = {h for h in (self.climbing | self.lifted) if h in proposed
                         and proposed[h] < params.max_weight and proposed[h] >= self.published.get(h, 0)}
        if not material_change(self.published, proposed, params):
            self.lifted = set()
            return None
        for h, w in proposed.items():
            if w != self.published.get(h) and h in estimates:
                self._answers_at_change[h] = estimates[h].answers
        self._answers_at_change = {h: n for h, n in self._answers_at_change.items() if h in proposed}
        self.published = proposed
        return dict(proposed)
