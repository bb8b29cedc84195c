"""Early drift detection (issue 17): a host whose capacity falls by 30 % loses weight within 5 s, and
identical instances with random service times never do. The project's FeedbackLoop against the cluster
simulator (virtual clock, scripted counters as Envoy's admin reports them, with the timing logger's
per-request times), and the CUSUM on its own."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agent.adaptive.drift import DriftDetector, DriftParams, RecoveryTest, Reference, common_mode, references
from tests.adaptive.cluster_sim import ClusterSim, Instance, MeanAt, constant

VICTIM = "h0:1"


def step(before: float, after: float, at: float) -> MeanAt:
    return lambda t: after if t >= at else before


def first_fall(sim: ClusterSim, host: str, after: float) -> float | None:
    return next((when - after for when, weights in sim.weight_log if when >= after and weights.get(host, 1000) < 1000),
                None)


@pytest.mark.parametrize("load", [0.37, 0.65])
def test_a_30_percent_capacity_fall_loses_weight_within_5_s(load: float) -> None:
    """One of 4 instances (lognormal service times, sigma 0.5, one slot) goes from 10 to 14.3 ms at t = 20 s
    (capacity -30 %). Before: the top group's tolerance kept it at 1000 until ~2.5x slower."""
    for seed in range(4):
        sim = ClusterSim({f"h{i}:1": Instance(step(0.010, 0.010 / 0.7, 20) if i == 0 else constant(0.010),
                                              dist="lognormal") for i in range(4)}, rate=load * 4 / 0.010, seed=seed)
        loop = sim.loop()
        sim.run(loop, 40)
        fall = first_fall(sim, VICTIM, 20)
        assert fall is not None and fall <= 5.0, (seed, fall, sim.weight_log)
        # A real loss, not a rounding step: the split calls for ~645 of 1000; the weight falls when the host is
        # marked (2.5-4.7 s) and moves again only by >= 25 % (material_change), so 645-860 can stay.
        assert sim.weight_at(VICTIM, 39) <= 800, sim.weight_log
        assert all(sim.weight_at(f"h{i}:1", 39) == 1000 for i in (1, 2, 3))


def test_without_per_request_times_the_tolerance_still_holds_it() -> None:
    """The control: the same fall seen through counters only (no timing logger) is not caught: the test
    needs per-request times, and without them the old rule applies (so the fall above is the detector)."""
    sim = ClusterSim({f"h{i}:1": Instance(step(0.010, 0.010 / 0.7, 20) if i == 0 else constant(0.010),
                                          dist="lognormal") for i in range(4)}, rate=0.65 * 4 / 0.010, seed=0,
                     timing=False)
    loop = sim.loop()
    sim.run(loop, 40)
    assert first_fall(sim, VICTIM, 20) is None


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), load=st.floats(0.3, 0.75), slots=st.sampled_from([1, 4]),
       sigma=st.floats(0.3, 0.8))
# Found by this test: a 4-slot host whose expected time ran 20-35 % low for 15 s (its throughput dipped, the
# single-server model amplified it ~3x) was marked at 56.6 s, before the variance was the long-run one.
@example(seed=8334, load=0.5897051204290338, slots=4, sigma=0.7901295528674639)
# ... and another one, found by a one-off run of 300 examples (marked at 54.3 s).
@example(seed=2625, load=0.5005508323540727, slots=4, sigma=0.5723510817894522)
def test_identical_lognormal_instances_never_flap(seed: int, load: float, slots: int, sigma: float) -> None:
    """No flapping: 4 identical instances with lognormal service times, any load from 30 to 75 %, one or four
    slots: every weight stays at 1000 for a minute and the detector marks nobody slow."""
    mean = 0.010 * slots
    sim = ClusterSim({f"h{i}:1": Instance(constant(mean), slots=slots, dist="lognormal", sigma=sigma)
                      for i in range(4)}, rate=load * 4 * slots / mean, seed=seed)
    loop = sim.loop()
    marked: list[float] = []
    sim.run(loop, 60, lambda now, lp: marked.extend([now] if lp._services["llm"].slow_hosts() else []))
    assert not marked, marked[:3]
    assert all(w == 1000 for _, ws in sim.weight_log for w in ws.values()), sim.weight_log


def test_a_recovered_host_is_unmarked_and_back_at_the_top() -> None:
    """A 30 % fall for 20 s, then back: marked slow, then unmarked, and back at 1000 within 15 s."""
    mean: MeanAt = lambda t: 0.010 / 0.7 if 20 <= t < 40 else 0.010  # noqa: E731
    sim = ClusterSim({f"h{i}:1": Instance(mean if i == 0 else constant(0.010), dist="lognormal")
                      for i in range(4)}, rate=0.5 * 4 / 0.010, seed=3)
    loop = sim.loop()
    sim.run(loop, 60)
    assert sim.weight_at(VICTIM, 39) < 1000
    back = next((when - 40 for when, ws in sim.weight_log if when >= 40 and ws.get(VICTIM) == 1000), None)
    assert back is not None and back <= 15, sim.weight_log
    assert not loop._services["llm"].slow_hosts()


# -- the test on its own ---------------------------------------------------------------------------------


def feed(detector: DriftDetector, rng: random.Random, factor: float, seconds: float, cv2: float = 0.3) -> float | None:
    """1 s batches of 40 requests whose mean is `factor` x expected; when the verdict first changed."""
    for second in range(int(seconds)):
        n = 40
        total = sum(0.010 * factor * rng.lognormvariate(-0.125, 0.5) for _ in range(n))
        if detector.observe(1.0, n, total, 0.010, cv2):
            return float(second + 1)
    return None


def test_the_cusum_marks_a_slower_host_and_unmarks_it_when_it_is_back() -> None:
    rng = random.Random(5)
    detector = DriftDetector()
    assert feed(detector, rng, 1.0, 600) is None  # 10 minutes as expected: never marked
    changed = feed(detector, rng, 1.3, 30)
    assert changed is not None and changed <= 5 and detector.slow
    back = feed(detector, rng, 1.0, 30)
    assert back is not None and not detector.slow


def test_no_test_before_the_variance_is_known_and_one_batch_cannot_decide() -> None:
    detector = DriftDetector()
    for _ in range(20):
        assert not detector.observe(1.0, 40, 40 * 0.050, 0.010, None)  # 5x slower, but no variance yet
    assert not detector.slow
    assert not detector.observe(1.0, 40, 40 * 0.100, 0.010, 0.3)  # one huge batch (a stall): capped
    assert detector.up == pytest.approx(DriftParams().max_batch_llr)


def test_a_slowdown_of_most_hosts_is_the_service_not_a_host() -> None:
    detectors = {f"h{i}": DriftDetector() for i in range(4)}
    detectors["h0"].slow = detectors["h1"].slow = True
    assert common_mode(detectors, 4)
    assert not any(d.slow for d in detectors.values())
    detectors["h0"].slow = True
    assert not common_mode(detectors, 4) and detectors["h0"].slow


def test_the_reference_is_the_others_and_leaves_out_slow_hosts() -> None:
    views = {"a": (0.010, 30.0), "b": (0.011, 30.0), "c": (0.012, 30.0), "d": (0.030, 20.0)}
    refs = references(views, {h: 0.5 for h in views}, {"d"}, DriftParams())
    assert refs["a"].service == pytest.approx(0.0115)  # b and c: d is marked slow
    assert refs["d"].service == pytest.approx(0.011)
    assert refs["a"].cv2 == pytest.approx(0.5)
    # A host as fast as the reference shows its service time idle, more under load.
    ref = Reference(0.010, 0.3)
    assert ref.expected(0.0) == pytest.approx(0.010)
    assert ref.expected(50.0) > ref.expected(20.0) > 0.010


def test_the_recovery_test_calls_a_floored_host_back_after_two_good_probes() -> None:
    """drift.RecoveryTest on its own: a host floored at 40 ms (nearly constant) whose probes now take 10 ms, the
    others' best at 11 ms: called back at the second answer (one read moves the sum at most 2.5 of 4), with
    the change point's evidence only (not the spell's answers)."""
    test = RecoveryTest(0.040)
    for _ in range(5):
        assert not test.observe(1, 0.041, 0.011)
    assert not test.observe(1, 0.010, 0.011)
    assert test.observe(1, 0.010, 0.011)
    answers, seconds = test.evidence
    assert answers == 2 and seconds == pytest.approx(0.020)
    for _ in range(3):  # the climb's answers are slow again: the run is undone
        test.observe(1, 0.040, 0.011)
    assert test.relapsed and not test.decided


@pytest.mark.parametrize(("sigma", "ratio", "most"), [(0.5, 4.0, 5), (0.5, 2.0, 25), (1.0, 4.0, 30)])
def test_the_recovery_test_rarely_calls_back_a_host_that_stays_slow(sigma: float, ratio: float, most: int) -> None:
    """Lognormal probes of a host that stays `ratio` x slower than the best, 2,000 of them (~80 minutes at the
    probe budget's pace at 150 rps): at most ~1 call in 70 probes (measured 3, 16 and 21 calls; e^4 odds per
    run, and the runs restart often). Each call costs about a second at a tenth of the heaviest weight before
    the climb's answers undo it (tests/adaptive/test_loop_sim.py: the slow host's share over two minutes)."""
    rng = random.Random(7)
    good = 0.010
    calls = 0
    test = RecoveryTest(ratio * good)
    for _ in range(2000):
        x = ratio * good * math.exp(rng.gauss(-sigma * sigma / 2, sigma))
        if test.observe(1, x, good):
            calls += 1
            test = RecoveryTest(ratio * good)
    assert calls <= most, calls
