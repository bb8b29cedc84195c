"""Adaptive on vs off for token streams on uneven instances, by time to first token (issue 16 item 3: "better
on uneven ones"). The workload of the matrix's `streams_uneven` cell in the cluster simulator: 4 instances
with 4 slots, streams of 0.25-2 s after the first token, ~60 % of the 16 slots busy, one instance 10x slower
to its first token (200 ms against 20 ms, lognormal).

The slow instance is slow to start a stream, but it holds a slot for about as long as the others do
(1.3 s against 1.15 s), so it carries a quarter of the pool's stream capacity. Weighting by time to first
byte floors it (weight 7 of 1000 in the real cell), the three others then run at ~80 % of their slots and
new streams wait for a slot there: least_request's p99 is the slow instance's 200 ms plus a little, the
adaptive one's is a slot wait of up to a whole stream (a fixed weight 7 without the loop does the same, and
so does an EDF pick like Envoy's instead of the simulator's random one). Through a real Envoy
(bench/streams_adaptive.py, 1,000 streams per policy) the pooled p99 was 3.57x least_request's, most of it in
the first round, when a healthy instance was floored as well; in the later rounds the real Envoy did better
with the slow one floored, so the simulator may overstate the steady-state cost. Strict xfail until the
estimator accounts for a streaming host's slot capacity (issue 16 item 3).
"""

from __future__ import annotations

import pytest

from tests.adaptive.cluster_sim import Instance, constant
from tests.adaptive.stream_sim import StreamSim

RATE = 0.6 * 16 / (1.125 + 0.020)  # 60 % of 16 slots held by streams of 1.125 s on average (+ first token)
WARM, END = 30.0, 150.0  # the p99 is taken over streams sent after the loop's first 30 s


def _p99(seed: int, adaptive: bool) -> float:
    sim = StreamSim({f"h{i}:1": Instance(constant(0.200 if i == 0 else 0.020), slots=4, dist="lognormal")
                     for i in range(4)}, rate=RATE, seed=seed)
    if adaptive:
        sim.run(sim.loop(), END)
    else:  # least_request alone: every weight stays equal, Envoy's power of two choices
        sim.advance_to(END)
    return sim.p99(WARM, END)


@pytest.mark.xfail(strict=True, reason="adaptive floors a slow-to-first-token instance whose slots the pool "
                                       "needs: TTFT p99 ~2x least_request's")
@pytest.mark.parametrize("seed", [1, 2])
def test_streams_uneven_adaptive_ttft_p99_is_better_than_least_request(seed: int) -> None:
    off, on = _p99(seed, adaptive=False), _p99(seed, adaptive=True)
    assert on < off, f"adaptive TTFT p99 {on * 1000:.0f} ms, least_request {off * 1000:.0f} ms"
