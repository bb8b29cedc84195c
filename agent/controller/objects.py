"""Pure builders for the objects the controller owns: a selectorless Service and its EndpointSlices.

The sidecar side reads them back in `agent/sources/slices.py`.

Names are deterministic, so server-side apply updates the same objects in place and a stale
slice is simply one whose name is no longer produced.
"""

from __future__ import annotations

import ipaddress
import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.config import LbPolicy
from agent.kube import (
    GROUP,
    KIND,
    LB_ANNOTATION,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    SERVICE_ID_LABEL,
    SERVICE_NAME_LABEL,
    VERSION,
)
from agent.model import Endpoint

MAX_ENDPOINTS_PER_SLICE = 100

_APP_PROTOCOL = {"http": "http", "https": "https", "grpc": "kubernetes.io/h2c"}


@dataclass(frozen=True)
class Owner:
    name: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": self.name, "uid": self.uid,
                "controller": True, "blockOwnerDeletion": True}


def port_name(protocol: str) -> str:
    return protocol if protocol in ("http", "https", "grpc") else "tcp"


def _labels(name: str, service_id: str) -> dict[str, str]:
    return {"app.kubernetes.io/managed-by": MANAGED_BY, SERVICE_ID_LABEL: service_id}


def service_manifest(name: str, namespace: str, service_id: str, port: int, protocol: str, headless: bool,
                     owner: Owner, annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "type": "ClusterIP",
        "ports": [{"name": port_name(protocol), "port": port, "protocol": "TCP"}],
    }
    app_protocol = _APP_PROTOCOL.get(protocol)
    if app_protocol:
        spec["ports"][0]["appProtocol"] = app_protocol
    if headless:
        spec["clusterIP"] = "None"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": _labels(name, service_id),
                     **({"annotations": dict(annotations)} if annotations else {}),
                     "ownerReferences": [owner.reference()]},
        "spec": spec,
    }


def _address_type(ip: str) -> str:
    return "IPv6" if ipaddress.ip_address(ip).version == 6 else "IPv4"


def endpoint_slices(name: str, namespace: str, service_id: str, endpoints: Sequence[Endpoint], protocol: str,
                    owner: Owner, annotations: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Slices grouped by address type and instance port, at most 100 endpoints each, sorted for stability."""
    groups: dict[tuple[str, int], list[Endpoint]] = defaultdict(list)
    for endpoint in sorted(endpoints):
        groups[(_address_type(endpoint.ip), endpoint.port)].append(endpoint)
    slices: list[dict[str, Any]] = []
    pname = port_name(protocol)
    for (address_type, port), members in sorted(groups.items()):
        for index in range(0, len(members), MAX_ENDPOINTS_PER_SLICE):
            chunk = members[index:index + MAX_ENDPOINTS_PER_SLICE]
            slice_port: dict[str, Any] = {"name": pname, "port": port, "protocol": "TCP"}
            if protocol in _APP_PROTOCOL:
                slice_port["appProtocol"] = _APP_PROTOCOL[protocol]
            labels = _labels(name, service_id) | {SERVICE_NAME_LABEL: name, MANAGED_BY_LABEL: MANAGED_BY}
            slices.append({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{name}-{address_type.lower()}-{port}-{index // MAX_ENDPOINTS_PER_SLICE}",
                    "namespace": namespace,
                    "labels": labels,
                    **({"annotations": dict(annotations)} if annotations else {}),
                    "ownerReferences": [owner.reference()],
                },
                "addressType": address_type,
                "ports": [slice_port],
                "endpoints": [
                    {"addresses": [e.ip],
                     "conditions": {"ready": e.ready, "serving": e.ready, "terminating": False}}
                    for e in chunk
                ],
            })
    return slices


def lb_annotation(policy: str, hash_header: str | None) -> dict[str, str]:
    """The annotation for a CR's loadBalancing (hashHeader only where the policy hashes)."""
    body: dict[str, str] = {"policy": policy}
    if hash_header and LbPolicy(policy).sticky:
        body["hashHeader"] = hash_header
    return {LB_ANNOTATION: json.dumps(body, sort_keys=True, separators=(",", ":"))}
