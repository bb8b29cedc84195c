"""What the sidecar source reads back from the controller's EndpointSlices: endpoints and load balancing.

A ModelArtsService's `spec.loadBalancing` is carried from the controller to the sidecars and gateways.

The controller does not render Envoy config; the sidecars and gateway agents that follow its
EndpointSlices do. So the CR's load-balancing options travel with the objects those agents
already read: the controller writes them as a JSON annotation on every EndpointSlice (and on the
Service, for `kubectl get svc -o yaml`), and the sidecar source turns the annotation back into the
service's `lb` before the snapshot is rendered. No extra RBAC: sidecars only read slices.

Precedence: an `lb` written explicitly in the sidecar's own config wins (the pod owner tuned it);
otherwise the CR's options apply. An annotation that does not parse is ignored with a warning.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from agent.config import HashKey, LbPolicy, LoadBalancing, ServicePolicy
from agent.kube import LB_ANNOTATION
from agent.model import Endpoint

log = logging.getLogger(__name__)



def lb_from_objects(objects: Iterable[Mapping[str, Any]], service: str) -> LoadBalancing | None:
    """The load balancing the controller announced on these slices, or None if none does (or it is bad)."""
    for obj in objects:
        raw = ((obj.get("metadata") or {}).get("annotations") or {}).get(LB_ANNOTATION)
        if raw is None:
            continue
        try:
            data = json.loads(raw)
            policy = LbPolicy(data["policy"])
            header = data.get("hashHeader")
            key = HashKey(header=str(header)) if policy.sticky and header else None
            return LoadBalancing(policy=policy, hash_key=key)
        except (ValueError, KeyError, TypeError, ValidationError) as exc:
            log.warning("ignoring an unusable %s annotation: %s", LB_ANNOTATION, str(exc).splitlines()[0][:200],
                        extra={"service": service})
            return None
    return None


def with_announced_lb(spec: ServicePolicy, announced: LoadBalancing | None) -> ServicePolicy:
    """`spec` with the CR's load balancing, unless the sidecar config set `lb` itself (or none is announced)."""
    if announced is None or "lb" in spec.model_fields_set:
        return spec
    # Keep the config's adaptive setting: it is the sidecar's own feedback loop, not the CR's business.
    lb = announced.model_copy(update={"adaptive": spec.lb.adaptive if announced.policy is LbPolicy.least_request
                                      else False})
    return spec if lb == spec.lb else spec.model_copy(update={"lb": lb})


def endpoints_from_slices(slices: Sequence[dict[str, Any]], schema: str = "http") -> tuple[Endpoint, ...]:
    """Slices → endpoints (the reverse of `agent.controller.objects.endpoint_slices`)."""
    found: set[Endpoint] = set()
    for item in slices:
        ports = [p.get("port") for p in item.get("ports") or [] if isinstance(p.get("port"), int)]
        for endpoint in item.get("endpoints") or []:
            conditions = endpoint.get("conditions") or {}
            ready = conditions.get("ready") is not False
            for address in endpoint.get("addresses") or []:
                for port in ports:
                    found.add(Endpoint(ip=address, port=port, schema=schema, ready=ready))  # type: ignore[arg-type]
    return tuple(sorted(found))
