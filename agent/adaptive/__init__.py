"""Latency-aware load balancing: Envoy's per-host counters -> estimates -> EDS endpoint weights.

`estimator` (per-endpoint latency and capacity), `weights` (estimates -> bounded integer weights, with
smoothing), `feedback` (the loop that reads Envoy and publishes), `table` (what sinks and /status read).
See docs/adaptive-lb.md.
"""

from agent.adaptive.feedback import FeedbackLoop, adaptive_services, admin_urls
from agent.adaptive.table import WeightTable

__all__ = ["FeedbackLoop", "WeightTable", "adaptive_services", "admin_urls"]
