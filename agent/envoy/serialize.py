"""Typed Envoy messages -> deterministic JSON/YAML text (via `google.protobuf.json_format`).

Determinism matters: the file sink skips rewriting a file whose bytes did not change, and the same
snapshot must always give byte-identical files. So keys are sorted, and `version_info` is a hash
of the resources' content rather than a counter.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

import yaml
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2, duration_pb2, json_format
from google.protobuf.message import Message

TYPE_URL_PREFIX = "type.googleapis.com/"
CLUSTER_TYPE = "envoy.config.cluster.v3.Cluster"
LISTENER_TYPE = "envoy.config.listener.v3.Listener"
LOAD_ASSIGNMENT_TYPE = "envoy.config.endpoint.v3.ClusterLoadAssignment"


def type_url(full_name: str) -> str:
    return TYPE_URL_PREFIX + full_name


def pack(message: Message) -> any_pb2.Any:
    """Wrap a message in `Any` with the `type.googleapis.com/<full name>` URL Envoy expects."""
    packed = any_pb2.Any()
    packed.Pack(message, type_url_prefix=TYPE_URL_PREFIX)
    return packed


def to_dict(message: Message) -> dict[str, Any]:
    # snake_case field names match Envoy's own docs and examples; Envoy accepts either spelling.
    # The JSON round trip turns the OrderedDicts json_format makes for `Any` into plain dicts (for YAML).
    result: dict[str, Any] = json.loads(json.dumps(
        json_format.MessageToDict(message, preserving_proto_field_name=True)))
    return result


def to_json(message: Message) -> str:
    return json.dumps(to_dict(message), sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def to_yaml(message: Message) -> str:
    return yaml.safe_dump(to_dict(message), sort_keys=True, default_flow_style=False, allow_unicode=True)


def content_version(resources: Iterable[Message]) -> str:
    """A version string that changes exactly when the resources' content changes."""
    digest = hashlib.sha256()
    for resource in resources:
        digest.update(resource.SerializeToString(deterministic=True))
        digest.update(b"\x00")
    return digest.hexdigest()[:16]


def discovery_response(resource_type: str, resources: Iterable[Message]) -> discovery_pb2.DiscoveryResponse:
    """The file format of a `path_config_source`: one DiscoveryResponse holding every resource."""
    items = list(resources)
    return discovery_pb2.DiscoveryResponse(
        version_info=content_version(items),
        type_url=type_url(resource_type),
        resources=[pack(item) for item in items],
    )


def parse_discovery_response(text: str) -> discovery_pb2.DiscoveryResponse:
    """Read back a file written by this module (the types are registered by importing the builders)."""
    return json_format.Parse(text, discovery_pb2.DiscoveryResponse())


def duration(seconds: float) -> duration_pb2.Duration:
    """A Duration field value; 0 is written explicitly (Envoy reads an explicit 0s as "disabled")."""
    value = duration_pb2.Duration()
    value.FromNanoseconds(round(seconds * 1_000_000_000))
    return value
