"""Per-node views: which part of the snapshot a node sees, read from its bootstrap `node.metadata`.

    modelarts.services        "llm,embed" (or a list): only these services; absent: all of them
    modelarts.role            "sidecar" (default): a listener per service and split
                              "gateway": the one shared gateway listener, routing by Host or path
    modelarts.listen_address  bind this node's listeners to this IP instead of the configured one
                              (several Envoys sharing one host, or binding the pod IP)

Nodes with equal metadata share one `NodeView`, so the cache builds each distinct view once per
snapshot version however many Envoys use it.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import Literal

from envoy.config.core.v3 import base_pb2
from google.protobuf import struct_pb2

log = logging.getLogger(__name__)

SERVICES_KEY = "modelarts.services"
ROLE_KEY = "modelarts.role"
LISTEN_ADDRESS_KEY = "modelarts.listen_address"

Role = Literal["sidecar", "gateway"]


@dataclass(frozen=True)
class NodeView:
    role: Role = "sidecar"
    services: frozenset[str] | None = None  # None: every service
    listen_address: str | None = None

    def selects(self, service: str) -> bool:
        return self.services is None or service in self.services


ALL = NodeView()


def node_view(node: base_pb2.Node) -> NodeView:
    fields = node.metadata.fields
    services = _names(fields[SERVICES_KEY]) if SERVICES_KEY in fields else None
    role: Role = "sidecar"
    if ROLE_KEY in fields:
        value = fields[ROLE_KEY].string_value
        if value == "gateway":
            role = "gateway"
        elif value != "sidecar":
            log.warning("unknown %s %r; serving the sidecar view", ROLE_KEY, value, extra={"node": node.id})
    address = None
    if LISTEN_ADDRESS_KEY in fields:
        value = fields[LISTEN_ADDRESS_KEY].string_value
        try:
            address = str(ipaddress.ip_address(value))
        except ValueError:
            log.warning("ignoring %s %r: not an IP address", LISTEN_ADDRESS_KEY, value, extra={"node": node.id})
    return NodeView(role=role, services=services, listen_address=address)


def _names(value: struct_pb2.Value) -> frozenset[str]:
    if value.HasField("list_value"):
        items = [v.string_value for v in value.list_value.values]
    else:
        items = value.string_value.split(",")
    return frozenset(item.strip() for item in items if item.strip())


def node_metadata(services: list[str] | None = None, role: Role | None = None,
                  listen_address: str | None = None) -> struct_pb2.Struct:
    """The metadata a bootstrap sets to select a view (the inverse of `node_view`)."""
    metadata = struct_pb2.Struct()
    if services is not None:
        metadata.update({SERVICES_KEY: ",".join(services)})
    if role is not None:
        metadata.update({ROLE_KEY: role})
    if listen_address is not None:
        metadata.update({LISTEN_ADDRESS_KEY: listen_address})
    return metadata
