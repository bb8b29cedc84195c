"""`AdaptiveRunner`: runs the feedback loop while any service is adaptive (`lb.adaptive`, "auto" by
default), and hands the weights to every sink that takes them (`update_weights(weights)`: the Envoy
file sink rewrites EDS files, the xDS sink pushes new EDS resources over ADS).

One object for any owner of sinks (the `run` runtime, a sidecar, a controller): `apply(config)` on
start and on every reload, `stop()` at the end, `rows(service)` for status pages.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from agent.adaptive.feedback import FeedbackLoop, adaptive_services
from agent.adaptive.table import WeightTable
from agent.config import DataPlaneConfig, ServicePolicy
from agent.sinks import Weighted

log = logging.getLogger(__name__)


class AdaptiveRunner:
    def __init__(self, sinks: Callable[[], Iterable[Any]]) -> None:
        self.table = WeightTable()
        self.loop: FeedbackLoop | None = None
        self._sinks = sinks

    def apply(self, config: DataPlaneConfig) -> None:
        # Without a sink that takes weights (no Envoy: Kubernetes or state file only) there is nothing to steer.
        services = adaptive_services(config) if self._weight_sinks() else ()
        if self.loop is None:
            if services:
                self.loop = FeedbackLoop(config, self.table, self._publish)
                self.loop.start()
                log.info("adaptive load balancing on", extra={"services": list(services)})
            return
        self.loop.update_config(config)  # drops the weights of services that turned it off
        if not services:
            self.loop.stop()
            self.loop = None
            log.info("adaptive load balancing off")

    def stop(self) -> None:
        if self.loop is not None:
            self.loop.stop()
            self.loop = None

    def rows(self, service: str) -> list[dict[str, object]]:
        return self.table.rows(service)

    def status_rows(self, spec: ServicePolicy) -> list[dict[str, object]] | None:
        """What status pages show for a service: its weights while the loop steers it, else None."""
        return self.table.rows(spec.name) if self.loop is not None and spec.adaptive_lb else None

    def health(self) -> dict[str, object] | None:
        """The loop's health (agent.adaptive.health) while it runs, else None."""
        return self.loop.health() if self.loop is not None else None

    def _weight_sinks(self) -> list[Callable[[Mapping[str, Mapping[str, int]]], None]]:
        return [sink.update_weights for sink in self._sinks() if isinstance(sink, Weighted)]

    def _publish(self, weights: Mapping[str, Mapping[str, int]]) -> None:
        for update in self._weight_sinks():
            update(weights)
