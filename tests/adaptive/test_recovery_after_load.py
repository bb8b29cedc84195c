"""A recovered host is called back within 10 s also after a spell near capacity (the matrix runs its slow
spell right after the 90 % load cell). The floored host's recovery test started from pseudo-reads with the
others' per-request CV^2, a batch-means figure under load with queueing in it: 40 s after a 90 % load phase it
was still 60-80, so each good probe moved the test ~0.4 instead of ~2 and the host came back 21-25 s after
recovering (the locked run of 12:40 UTC: 20.1 s). The pseudo-reads' CV^2 is now at most 4 (a CV of 2)."""

from __future__ import annotations

from tests.adaptive.cluster_sim import ClusterSim, Instance, constant
from tests.adaptive.test_loop_sim import settle_time


def test_a_recovered_host_is_back_within_10_s_after_a_spell_near_capacity() -> None:
    """0-40 s: 90 % load (3 x 10 ms + 1 x 40 ms, 292 rps); 5 s idle; then 150 rps on four 10 ms hosts, one of
    them at 40 ms from 63 to 83 s. Back at the heaviest weight within 10 s of 83 s in 6 seeds of 6 (before:
    3.5, 4.9, 21.1, 21.4, 25.5, 25.5 s; now 3.5-5.4 s)."""
    def victim(t: float) -> float:
        return 0.040 if 63 <= t < 83 else 0.010

    def first_slow(t: float) -> float:
        return 0.040 if t < 40 else 0.010

    def rate(t: float) -> float:
        return 292.0 if t < 40 else (0.0 if t < 45 else 150.0)

    backs = []
    for seed in range(6):
        sim = ClusterSim({"h0:1": Instance(constant(0.010)), "h1:1": Instance(victim),
                          "h2:1": Instance(constant(0.010)), "h3:1": Instance(first_slow)},
                         rate=rate, seed=seed, edf=True)
        sim.run(sim.loop(), 100)
        assert settle_time(sim, "h1:1", 63, "down") is not None, sim.weight_log
        backs.append(settle_time(sim, "h1:1", 83, "up"))
    assert all(b is not None and b <= 10 for b in backs), backs
