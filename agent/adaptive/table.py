"""`WeightTable`: the adaptive weights currently published, per service, plus what they were based on.

Sinks read `weights()` (service -> endpoint address -> weight); `/status` and `modelarts-agent status`
read `rows()`. Thread-safe: the feedback loop writes, sinks and the admin server read.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from agent.adaptive.estimator import Estimate


@dataclass(frozen=True)
class EndpointView:
    address: str
    weight: int
    latency_ms: float | None  # the estimate behind the weight
    rate: float  # requests/s sent to it
    in_flight: float

    def as_dict(self) -> dict[str, object]:
        return {"address": self.address, "weight": self.weight,
                "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 2),
                "rate": round(self.rate, 2), "in_flight": round(self.in_flight, 2)}


class WeightTable:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._weights: dict[str, Mapping[str, int]] = {}
        self._views: dict[str, tuple[EndpointView, ...]] = {}
        self.version = 0

    def set_weights(self, service: str, weights: Mapping[str, int]) -> None:
        with self._lock:
            self._weights[service] = MappingProxyType(dict(weights))
            self.version += 1

    def set_view(self, service: str, weights: Mapping[str, int], estimates: Mapping[str, Estimate]) -> None:
        views = tuple(EndpointView(address=address, weight=weight,
                                   latency_ms=estimates[address].latency * 1000 if address in estimates else None,
                                   rate=estimates[address].rate if address in estimates else 0.0,
                                   in_flight=estimates[address].in_flight if address in estimates else 0.0)
                      for address, weight in sorted(weights.items()))
        with self._lock:
            self._views[service] = views

    def drop(self, service: str) -> bool:
        with self._lock:
            self._views.pop(service, None)
            if self._weights.pop(service, None) is None:
                return False
            self.version += 1
            return True

    def services(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(sorted(self._weights))

    def weights(self) -> dict[str, Mapping[str, int]]:
        with self._lock:
            return dict(self._weights)

    def get(self, service: str) -> Mapping[str, int] | None:
        with self._lock:
            return self._weights.get(service)

    def rows(self, service: str) -> list[dict[str, object]]:
        with self._lock:
            return [view.as_dict() for view in self._views.get(service, ())]
