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
from dataclasses import dataclass

from agent.adaptive.estimator import Estimate

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

    @property
    def floor(self) -> int:
        return max(1, math.ceil(self.max_weight / self.max_ratio))


def snap_capacities(capacity: Mapping[str, float], tolerance: float,
                    top: Collection[str] = ()) -> dict[str, float]:
    """Hosts close to the best count as the best. Hysteresis: a host in `top` (the best until now) only
    leaves at twice the tolerance, so a host near the line does not flap between the two."""
    best = max(capacity.values(), default=0.0)
    return {host: best if value * (1.0 + (2 * tolerance if host in top else tolerance)) >= best else value
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


def shares_to_weights(shares: Mapping[str, float], params: WeightParams) -> dict[str, int]:
    """Heaviest share -> `max_weight`; anything under `probe_band` x the floor -> the floor (probe traffic
    only), so a host hovering just above the floor does not cause rewrites for nothing."""
    top = max(shares.values(), default=0.0)
    if top <= 0:
        return dict.fromkeys(shares, params.max_weight)
    weights = {h: min(params.max_weight, round(params.max_weight * s / top)) for h, s in shares.items()}
    band = min(params.probe_band * params.floor, params.max_weight)
    return {h: w if w >= band else params.floor for h, w in weights.items()}


def target_weights(estimates: Mapping[str, Estimate], params: WeightParams,
                   top: Collection[str] = ()) -> dict[str, int]:
    """The weights these estimates call for, before smoothing (`top`: hosts at the heaviest weight now)."""
    if not estimates:
        return {}
    capacity = snap_capacities({h: e.capacity for h, e in estimates.items()}, params.equal_tolerance, top)
    demand = sum(e.rate for e in estimates.values())
    return shares_to_weights(square_root_split(capacity, demand, params.overload), params)


def smooth(current: Mapping[str, int], target: Mapping[str, int], params: WeightParams,
           may_rise: Collection[str] | None = None) -> dict[str, int]:
    """Fall at once (protect latency), rise at most `max_rise`x per update (probe back in gently), and
    only hosts in `may_rise` (None: all) rise at all.

    A host new to `current` starts at the target. Hosts gone from `target` are dropped.
    """
    out: dict[str, int] = {}
    for host, want in target.items():
        have = current.get(host)
        if have is None or want <= have:
            out[host] = want
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

    def propose(self, estimates: Mapping[str, Estimate], all_equal: bool = False) -> dict[str, int] | None:
        """New weights worth publishing, or None to keep the current ones. Call once per update interval.

        `all_equal`: too little evidence yet to tell hosts apart (every host at the heaviest weight).
        """
        top = {h for h, w in self.published.items() if w >= self.params.max_weight}
        target = dict.fromkeys(estimates, self.params.max_weight) if all_equal \
            else target_weights(estimates, self.params, top)
        # A rise must be called for in consecutive updates: one noisy estimate does not move a weight up
        # (falls are never delayed: they protect latency).
        self._rising = {h: self._rising.get(h, 0) + 1 for h, w in target.items()
                        if h in self.published and w > self.published[h]
                        and (w >= self.published[h] * (1 + self.params.min_change) or w >= self.params.max_weight)}
        may_rise = {h for h, n in self._rising.items() if n >= self.params.rise_confirmations}
        proposed = smooth(self.published, target, self.params, may_rise)
        if not material_change(self.published, proposed, self.params):
            return None
        self.published = proposed
        return dict(proposed)
