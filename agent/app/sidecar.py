"""`SidecarRuntime`, the `sidecar` preset: one EndpointSlice watch for all followed Services. No ModelArts calls.

The chart's gateway pods run this same preset: their config turns on xDS (`envoy.files: false`) and
their Envoy asks for the gateway role in its node metadata, so nothing here differs but the config;
/status then has an `xds` entry.

What the sinks render is the config with each CR's load balancing, which the watches read from the
slices (`on_policy`); a reload re-applies it (`reloaded`). Following another set of Services needs a
restart, since the watch's selector names the followed Services.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.app.runtime import Runtime, SinkFactory
from agent.config import DataPlaneConfig, ServicePolicy
from agent.kube.client import KubeClient
from agent.sources import Source
from agent.sources.kubernetes import KubernetesSource, SliceWatch
from agent.validation import parse_networks

log = logging.getLogger(__name__)


def reloaded(new: DataPlaneConfig, sources: Mapping[str, KubernetesSource]) -> DataPlaneConfig:
    """A reloaded config as the sinks render it: each followed service's new spec, its CR's load balancing
    re-applied. The followed set stays (the one watch selects them): a service added or removed is reported
    and waits for a restart."""
    specs = {spec.name: spec for spec in new.services}
    added, removed = sorted(set(specs) - set(sources)), sorted(set(sources) - set(specs))
    if added or removed:
        log.warning("the sidecar follows the same services until restart; not applied: %s",
                    ", ".join([*(f"+{name}" for name in added), *(f"-{name}" for name in removed)]))
    services = tuple(source.reconfigure(specs[name]) if name in specs else source.policy
                     for name, source in sources.items())
    return new.model_copy(update={"services": services, "splits": tuple(
        t for t in new.splits if all(b.service in sources for b in t.backends))})


class SidecarRuntime(Runtime[DataPlaneConfig]):
    mode = "sidecar"

    def __init__(self, config: DataPlaneConfig, config_path: Path | None, *, kube: KubeClient, namespace: str,
                 loader: Callable[[Path], DataPlaneConfig], sink_factory: SinkFactory | None = None) -> None:
        self.kube = kube  # closed with the runtime (also when start-up fails)
        self.namespace = namespace
        self.watches: dict[str, KubernetesSource] = {}
        super().__init__(config, config_path, loader=loader, sink_factory=sink_factory)

    def _make_sources(self) -> Sequence[Source]:
        discovery = self.config.discovery
        allowed = parse_networks(discovery.allowed_cidrs)
        # One list and one watch for every followed Service (agent/sources/kubernetes.py: SliceWatch).
        shared = SliceWatch(self.kube, self.namespace, [spec.name for spec in self.config.services], self.stop_event)
        self.watches = {spec.name: KubernetesSource(self.kube, self.namespace, spec, self.store, allowed,
                                                    discovery.max_endpoints, self.stop_event, self._on_policy,
                                                    watch=shared)
                        for spec in self.config.services}
        return list(self.watches.values())

    def _on_policy(self, spec: ServicePolicy) -> None:
        """A CR's load balancing, read from its slices: the sinks render that service with it from now on."""
        # The source's current policy, not `spec`: a reload may have come in between.
        self.render(lambda config: config.with_service(self.watches[spec.name].policy))

    def _reconfigured(self, config: DataPlaneConfig) -> DataPlaneConfig:
        return reloaded(config, self.watches)

    def facts(self) -> dict[str, Any]:
        return {"modelarts": None,
                "kubernetes": {"namespace": self.namespace,
                               "watch_errors": {name: watch.last_error for name, watch in self.watches.items()}}}

    def _close(self) -> None:
        self.kube.close()
