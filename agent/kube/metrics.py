"""Prometheus metrics of the Kubernetes side (writes, conflicts, watches, leadership), on the agent's registry."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from agent.metrics import REGISTRY

K8S_WRITES = Counter(
    "modelarts_agent_k8s_writes_total", "Kubernetes API writes by object kind and result.",
    ["kind", "result"], registry=REGISTRY,
)
K8S_CONFLICTS = Counter(
    "modelarts_agent_k8s_conflicts_total",
    "HTTP 409 answers to Kubernetes writes (field-manager or concurrent-write conflicts), by kind.",
    ["kind"], registry=REGISTRY,
)
K8S_WATCH_RESTARTS = Counter(
    "modelarts_agent_k8s_watch_restarts_total", "Watch streams restarted, by resource and reason.",
    ["resource", "reason"], registry=REGISTRY,
)
LEADER = Gauge(
    "modelarts_agent_leader", "1 while this controller replica holds the leader Lease (and may call ModelArts).",
    registry=REGISTRY,
)
LEADER_TRANSITIONS = Counter(
    "modelarts_agent_leader_transitions_total", "Times this replica started or stopped leading.", ["event"],
    registry=REGISTRY,
)
