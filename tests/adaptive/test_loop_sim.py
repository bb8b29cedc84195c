"""The feedback loop against the discrete-event cluster simulator (tests/adaptive/cluster_sim.py): the
behaviours issue 17 asks for, each with the project's own FeedbackLoop on a virtual clock."""

from __future__ import annotations

import pytest

from agent.adaptive.weights import WeightParams
from tests.adaptive.cluster_sim import ClusterSim, Instance, constant, spell

SLOW = "h0:1"


def settle_time(sim: ClusterSim, host: str, after: float, test: str) -> float | None:
    """Seconds after `after` until the weight of `host` passes `test` ("down": < 1000, "up": 1000)."""
    times = [after] + [when for when, _ in sim.weight_log if when > after]
    for when in times:
        weight = sim.weight_at(host, when)
        if (weight < 1000) if test == "down" else (weight >= 1000):
            return when - after
    return None


def test_a_slow_spell_is_cut_at_once_and_the_host_is_back_at_its_fair_weight_within_10_s() -> None:
    """20 s at 4x its service time, 150 rps over 4 instances (the issue: on the floor 29 s, then ~7 s of
    doublings). Recovery is driven by the floored host's probe answers, which arrive at the probe budget's
    pace (~0.4/s here); with this simulator's random pick they come with Poisson gaps (one seed waits 13 s
    for its second probe), so the bound here is loose: six runs 3.3, 1.6, 2.8, 3.4, 15.2, 4.1 s (before the
    recovery test: 5.1, 4.0, 1.0, 21.9, 16.4, 13.5 s). With Envoy's EDF pick, every run: see below. The cut:
    2.5-3.6 s (P2C steers around the slowing host, so its latency and the fast-horizon peak rise gradually)."""
    downs, backs = [], []
    for seed in range(6):
        sim = ClusterSim({f"h{i}:1": Instance(spell(0.010, 0.040, 20, 40) if i == 0 else constant(0.010))
                          for i in range(4)}, rate=150, seed=seed)
        loop = sim.loop()
        sim.run(loop, 70)
        down, back = settle_time(sim, SLOW, 20, "down"), settle_time(sim, SLOW, 40, "up")
        assert down is not None and back is not None, sim.weight_log
        downs.append(down)
        backs.append(back)
        assert sim.share([SLOW], 25, 40) <= WeightParams().probe_share  # while slow: probe traffic only
    assert max(downs) <= 4, downs
    assert sorted(backs)[len(backs) // 2 - 1] <= 10 and max(backs) <= 25, backs


@pytest.mark.parametrize("seed", [0, 1])
def test_floored_hosts_share_one_probe_budget_however_many_they_are(seed: int) -> None:
    """2 of 4 instances slow (60 ms against 10 ms, the fast ones serve 4 at a time): both on the floor, and
    together they get at most the probe budget (0.5 %), not 2 x 1/100 as before."""
    sim = ClusterSim({f"h{i}:1": Instance(constant(0.060 if i < 2 else 0.010), slots=4 if i >= 2 else 1)
                      for i in range(4)}, rate=150, seed=seed)
    loop = sim.loop()
    sim.run(loop, 70)
    slow = ["h0:1", "h1:1"]
    assert all(sim.weight_at(h, 69) < WeightParams().floor for h in slow)
    assert sim.share(slow, 20, 70) <= WeightParams().probe_share


@pytest.mark.parametrize(("dist", "slots"), [("lognormal", 1), ("lognormal", 4), ("exp", 4)])
def test_identical_instances_keep_equal_weights(dist: str, slots: int) -> None:
    """No flapping: identical instances with random service times at 65 % load keep equal weights."""
    mean = 0.010 * slots
    for seed in (0, 1):
        sim = ClusterSim({f"h{i}:1": Instance(constant(mean), slots=slots, dist=dist) for i in range(4)},
                         rate=0.65 * 4 * slots / mean, seed=seed)
        loop = sim.loop()
        sim.run(loop, 60)
        assert all(w == 1000 for _, ws in sim.weight_log for w in ws.values()), sim.weight_log


@pytest.mark.parametrize("dist", ["const", "lognormal"])
def test_a_recovered_host_is_back_at_the_heaviest_weight_within_10_s_every_time(dist: str) -> None:
    """Issue 17's recovery target in every run, not at the median: a 20 s spell at 4x, 150 rps over 4
    instances. Before, the floored host's recent view (its last ~3 probe answers, decayed per answer) needed
    ~5-6 answers after the recovery to forget the spell, at the probe budget's ~0.4 answers/s: 6-17 s. Now a
    sequential test on its probe answers (as good as the others against as bad as it was) decides after 2-3,
    and the climb goes 1/10 -> the top in two updates."""
    backs = []
    for seed in range(8):
        sim = ClusterSim({f"h{i}:1": Instance(spell(0.010, 0.040, 20, 40) if i == 0 else constant(0.010), dist=dist)
                          for i in range(4)}, rate=150, seed=seed, edf=True)
        loop = sim.loop()
        sim.run(loop, 60)
        backs.append(settle_time(sim, SLOW, 40, "up"))
        assert sim.share([SLOW], 25, 40) <= WeightParams().probe_share  # while slow: probe traffic only
    assert all(b is not None and b <= 10 for b in backs), backs


@pytest.mark.parametrize("dist", ["exp", "lognormal", "const"])
def test_a_host_that_stays_slow_is_not_climbed_back_on_lucky_probes(dist: str) -> None:
    """The other side of a faster recovery: a host that stays 4x slower for two minutes never gets back to
    the heaviest weight, and stays within the probe budget (exponential service times: within twice it, since
    its probes are often fast by chance and the starvation guard lifts it a little every ~20 s; measured
    0.37-0.72 % against 0.44-0.93 % before the recovery test). An exponential host's lucky run that does get
    called back climbs only to a tenth, and no further unless the answers that brings add to the call."""
    budget = WeightParams().probe_share * (2 if dist == "exp" else 1)
    for seed in range(4):
        sim = ClusterSim({f"h{i}:1": Instance(constant(0.040 if i == 0 else 0.010), dist=dist) for i in range(4)},
                         rate=150, seed=seed)
        loop = sim.loop()
        sim.run(loop, 130)
        assert sim.share([SLOW], 10, 130) <= budget, (seed, sim.share([SLOW], 10, 130))
        highest = max((ws.get(SLOW, 0) for t, ws in sim.weight_log if t > 10), default=sim.weight_at(SLOW, 10))
        assert highest < 1000, (seed, sim.weight_log)
