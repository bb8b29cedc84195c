"""The tail rule for a service of token streams (issue 16 item 3): what a user waits for is the time to the
first token, and the figure that matters is its p99, not its mean.

`weights.speed_split` minimises the *mean* time to first byte. A host much slower to its first token (10x)
but with free slots then keeps about its slot share (~23 % of four hosts' streams), and the p99 is that host's
own ~96th percentile: whatever share above ~1 % such a host has, its first tokens are the p99, and only a
share under that (the probe floor: 0.5 % of the requests for all floored hosts, issue 17) takes it out. So:
a *tail host* (`tail_ratio` x slower to its first byte than the fastest host) goes to the floor when the
other hosts can carry all the streams without their streams waiting for a slot, and otherwise keeps what
the mean split gives it: slot waits are load (a stream waits for another's remaining length, hundreds of
ms), and at ~45 % of the slots and above, moving the tail host's streams onto the others costs more in
waits than its slow first tokens (the cluster simulator, one instance of four at 200 ms against 20 ms, its
weight swept: at 30 % of the slots flooring it gives 0.2-0.3x least_request's p99, at 45 % 1.0-1.4x, at
60 % 1.5-1.9x). There is no partial cut: from 23 % to 10 % of the streams the p99 moves from the tail host's
96th percentile to its 90th, little, while the others' slot waits grow.

"Can carry": the other hosts' slots pooled as an M/M/c queue (Envoy's least-request pick sends a stream to a
host with a free slot while there is one, so their slots act together), offered the whole demand at the
time a stream holds a slot: the probability of waiting (Erlang C) at most `tail_wait` (half the 1 % a p99
hides) and at most `tail_load` of the slots busy. Slots: the most streams seen in flight at once on any
host, to the nearest whole one. That count is a sampled peak: it undercounts at low load (the hosts never
showed all their slots) and overcounts when streams queue at the instance (Envoy counts them in flight: 6-7
on 4-slot hosts at 60 % of the slots), so `tail_load` is set where the overcount of a 60 % load does not
floor the tail host and a 30 % load does (simulator: at 60 % the rule never acts in 3 seeds of 10 minutes,
at 30 % it floors the host for part of the run, p99 0.45-0.83x least_request's, at 38-45 % 0.83-1.09x).
Identical hosts are never tail hosts (`tail_hosts` asks for two figures).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agent.adaptive.estimator import Estimate


@dataclass(frozen=True)
class TailParams:
    tail_ratio: float = 4.0  # a host this many times the fastest's first-byte time sets the p99 if it has streams
    tail_wait: float = 0.005  # the fast hosts' streams may wait for a slot this often (half of 1 - 0.99)
    tail_load: float = 0.45  # and use at most this share of their slots (see the module: an overcount)


def erlang_c(servers: int, offered: float) -> float:
    """Probability that an arrival waits in an M/M/`servers` queue offered `offered` Erlangs (1 at or over
    capacity)."""
    if servers <= 0 or offered >= servers:
        return 1.0
    if offered <= 0:
        return 0.0
    blocking = 1.0  # Erlang B by its recurrence, then C from B
    for k in range(1, servers + 1):
        blocking = offered * blocking / (k + offered * blocking)
    load = offered / servers
    return blocking / (1.0 - load * (1.0 - blocking))


def carry_limit(slots: int, hold: float, params: TailParams) -> float:
    """Streams/s that `slots` slots, each held `hold` s a stream, carry with waits at most `tail_wait` of the
    time and at most `tail_load` of the slots busy."""
    if slots <= 0 or hold <= 0:
        return 0.0
    low, high = 0.0, params.tail_load * slots
    if erlang_c(slots, high) <= params.tail_wait:
        return high / hold
    for _ in range(50):
        mid = (low + high) / 2
        if erlang_c(slots, mid) <= params.tail_wait:
            low = mid
        else:
            high = mid
    return low / hold


def tail_hosts(estimates: Mapping[str, Estimate], params: TailParams) -> set[str]:
    """Hosts `tail_ratio` x slower to their first byte than the others, by two figures: the lowest of their
    recent reads' means (`Estimate.base`, no slot wait in it) against the fastest host's, and their mean
    (`Estimate.measured`) against *every* other host's mean time to first byte, slot waits included, over
    the 10 s horizon and the 2 s one (`Estimate.fast`). The first, because the lowest of ~40 reads differs by
    chance up to ~3x between identical hosts and a mean does not; the second, because the rule is for a host
    whose first tokens are slower than what the others' streams get, waits and all: once the others wait for
    slots that long (the tail host's streams moved onto them at a load they cannot carry: the slot count's
    overcount), the host is no tail host and gets its share again."""
    judged = {h: (e.base, e.measured) for h, e in estimates.items()
              if e.base is not None and e.base > 0 and e.measured is not None and e.measured > 0}
    if len(judged) < 2:
        return set()
    low_base = min(b for b, _ in judged.values())
    seen = {h: max(m, estimates[h].fast or 0.0) for h, (_, m) in judged.items()}
    return {h for h, (b, m) in judged.items()
            if b >= params.tail_ratio * low_base
            and all(m >= params.tail_ratio * v for other, v in seen.items() if other != h)}


def tail_split(shares: Mapping[str, float], estimates: Mapping[str, Estimate], demand: float, hold: float,
               params: TailParams | None = None) -> dict[str, float]:
    """`shares` (the mean split), or, when the other hosts can carry all of `demand` (see the module), the
    same with the tail hosts at nothing (shares_to_weights then gives them the probe floor)."""
    params = params or TailParams()
    tail = tail_hosts(estimates, params) & set(shares)
    fast = [h for h in shares if h not in tail]
    total = sum(shares.values())
    if not tail or not fast or demand <= 0 or total <= 0 or sum(shares[h] for h in tail) <= 0:
        return dict(shares)
    # Slots per host: the most streams seen in flight at once on any host (the hosts of a service run the same
    # server), to the nearest whole slot.
    slots = len(fast) * max(round(max(e.peak_active for e in estimates.values())), 1)
    holding = sum((estimates[h].hold or hold) for h in fast) / len(fast)
    if carry_limit(slots, holding, params) < demand:
        return dict(shares)
    rest = sum(shares[h] for h in fast)
    out = dict.fromkeys(shares, 0.0)
    for h in fast:  # the tail's share to the others, in proportion to theirs (evenly if they had none)
        out[h] = total * (shares[h] / rest if rest > 0 else 1.0 / len(fast))
    return out
