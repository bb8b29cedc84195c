"""Prometheus metrics of the xDS server, on the agent's registry."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from agent.metrics import REGISTRY
from agent.sinks.xds.types import ORDER

STREAMS = Gauge(
    "modelarts_agent_xds_streams", "Open ADS streams, by API (sotw or delta).", ["api"], registry=REGISTRY,
)
PUSHES = Counter(
    "modelarts_agent_xds_pushes_total", "xDS responses sent, by resource type URL.", ["type_url"],
    registry=REGISTRY,
)
NACKS = Counter(
    "modelarts_agent_xds_nacks_total", "xDS responses Envoy rejected (NACK), by resource type URL.", ["type_url"],
    registry=REGISTRY,
)
CACHE_VERSION = Gauge(
    "modelarts_agent_xds_cache_version", "Version of the resource cache the xDS server serves.", registry=REGISTRY,
)

# Children made once: a push is counted on every stream, and `labels()` is not free.
PUSHED = {type_url: PUSHES.labels(type_url) for type_url in ORDER}
