"""How soon a host that got slower loses weight, in the cluster simulator with the project's FeedbackLoop
(issue 17: a 20 s slow spell, weight down within 3 s; a linear drift, p99 near an oracle's)."""

from __future__ import annotations

from agent.adaptive.weights import square_root_split
from tests.adaptive.cluster_sim import ClusterSim, Instance, constant, drift, spell

VICTIM = "h0:1"


def halved(sim: ClusterSim, after: float) -> float | None:
    """Seconds after `after` until the victim's weight is half the heaviest or less (the matrix's test)."""
    return next((when - after for when, ws in sim.weight_log
                 if when >= after and ws.get(VICTIM, 1000) <= 0.5 * max(ws.values())), None)


def test_a_slow_spell_after_an_overload_is_still_cut() -> None:
    """10 s at 110 % of capacity (queues of seconds), 25 s of normal traffic, then one host 4x slower.
    Before: every host's 10 s mean still held the blow-up (~100 ms for 12 ms hosts), the slowing host
    looked like the others and was not cut within 15 s. Now a clearly faster short horizon replaces the
    long one (exact per-request times only), and the drift test's reference ignores a stale long horizon."""
    for seed in range(4):
        sim = ClusterSim({f"h{i}:1": Instance(spell(0.010, 0.040, 45, 80) if i == 0 else constant(0.010))
                          for i in range(4)}, rate=lambda t: 440.0 if 10 <= t < 20 else 150.0, seed=seed)
        sim.run(sim.loop(), 60)
        down = halved(sim, 45)
        assert down is not None and down <= 8, (seed, down)


def test_a_host_found_slower_is_cut_at_that_read_not_at_the_next_update() -> None:
    """With weight updates 5 s apart, a host the drift test marks between two updates is cut at once."""
    for seed in range(3):
        sim = ClusterSim({f"h{i}:1": Instance(spell(0.010, 0.040, 21, 60) if i == 0 else constant(0.010))
                          for i in range(4)}, rate=150, seed=seed)
        sim.run(sim.loop(update_interval_seconds=5.0), 40)
        down = halved(sim, 21)
        assert down is not None and down <= 3.5, (seed, down, sim.weight_log)


def oracle_share(seed: int, mean_at: object) -> float:
    """The victim's share under static weights from the true service times, updated every 0.25 s."""
    sim = ClusterSim({f"h{i}:1": Instance(mean_at if i == 0 else constant(0.010)) for i in range(4)},  # type: ignore[arg-type]
                     rate=150, seed=seed)
    t = 0.0
    while t < 80:
        capacity = {h: 1 / i.mean(t) for h, i in sim.instances.items()}
        shares = square_root_split(capacity, 150)
        top = max(shares.values())
        sim.weights = {h: max(1, round(1000 * v / top)) for h, v in shares.items()}
        t += 0.25
        sim.advance_to(t)
    return sim.share([VICTIM], 20, 80)


def test_a_drifting_host_gets_about_the_share_an_oracle_gives_it() -> None:
    """10 -> 40 ms over 60 s at 150 rps. Once marked slower, its estimate follows its last ~2 s; judged by
    the 10 s horizon it got 9.2-9.9 % of the requests against the oracle's 7.7 % (p99 ~1.0x the oracle's)."""
    mean_at = drift(0.010, 0.040, 20, 80)
    for seed in range(2):
        sim = ClusterSim({f"h{i}:1": Instance(mean_at if i == 0 else constant(0.010)) for i in range(4)},
                         rate=150, seed=seed)
        sim.run(sim.loop(), 80)
        share, oracle = sim.share([VICTIM], 20, 80), oracle_share(seed, mean_at)
        assert share <= 1.1 * oracle, (seed, share, oracle)
