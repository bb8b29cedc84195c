"""Token streams in the cluster simulator: a stream holds one of its instance's slots from the moment it
is served until its last token, its first token comes `mean` (the instance's speed) after it got a slot,
and Envoy's timing logger counts its time to first byte (waiting for a slot included) when it ends."""

from __future__ import annotations

from tests.adaptive.cluster_sim import ClusterSim


class StreamSim(ClusterSim):
    """`ClusterSim` whose requests are streams of `min_length`-`max_length` seconds after the first token."""

    def __init__(self, *args: object, min_length: float = 0.25, max_length: float = 2.0, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.min_length, self.max_length = min_length, max_length

    def _start(self, host: str, arrival: float) -> None:
        inst = self.instances[host]
        inst.busy += 1
        first = self.now + inst.draw(self.now, self.rng)  # the first token
        end = first + self.rng.uniform(self.min_length, self.max_length)
        # ClusterSim times an answer from the `arrival` its done event carries to the event: shift it so
        # that the time counted is the time to the first token (slot wait included), as Envoy counts it.
        self._push(end, "done", host, end - (first - arrival))
