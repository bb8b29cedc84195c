"""Glue for the xDS tests: configs with an xDS section, and a scripted ADS client for protocol tests."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from google.rpc import status_pb2

from agent.config import AgentConfig
from agent.envoy.nodes import node_metadata
from agent.sinks.xds.cache import XdsCache
from agent.sinks.xds.delta import DeltaSession
from agent.sinks.xds.encode import ResponseEncoder
from agent.sinks.xds.sotw import SotwSession
from agent.sinks.xds.types import CDS, EDS, LDS, RDS
from tests.envoy.harness import free_port, make_config

MESSAGES: dict[str, type[Any]] = {CDS: cluster_pb2.Cluster, EDS: endpoint_pb2.ClusterLoadAssignment,
                                  LDS: listener_pb2.Listener, RDS: route_pb2.RouteConfiguration}


def xds_config(tmp: Path, services: Iterable[Mapping[str, Any]], splits: Iterable[Mapping[str, Any]] = (),
               xds: Mapping[str, Any] | None = None, gateway: Mapping[str, Any] | None = None) -> AgentConfig:
    base = make_config(tmp / "envoy", free_port(), services, splits)
    return base.model_copy(update={
        "xds": base.xds.model_validate({"enabled": True, "port": free_port(), **(xds or {})}),
        "gateway": base.gateway.model_validate(dict(gateway or {})),
    })


def unpack(resource: any_pb2.Any, type_url: str) -> Any:
    message = MESSAGES[type_url]()
    assert resource.Unpack(message)
    return message


def node(node_id: str = "n1", **metadata: Any) -> Any:
    from envoy.config.core.v3 import base_pb2

    return base_pb2.Node(id=node_id, metadata=node_metadata(**metadata))


class SotwClient:
    """Plays Envoy's side of a state-of-the-world stream against a `SotwSession`, without gRPC."""

    def __init__(self, cache: XdsCache, **node_metadata: Any) -> None:
        self.session = SotwSession(cache, ResponseEncoder())
        self._node = node(**node_metadata)
        self.last: dict[str, discovery_pb2.DiscoveryResponse] = {}

    def request(self, type_url: str, names: Sequence[str] = (), ack: bool = True,
                error: str | None = None, nonce: str | None = None) -> list[discovery_pb2.DiscoveryResponse]:
        previous = self.last.get(type_url)
        request = discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=list(names), node=self._node)
        if previous is not None and (ack or error):
            request.response_nonce = previous.nonce if nonce is None else nonce
            request.version_info = previous.version_info
        if error is not None:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        self.session.receive(request)
        return self.pump()

    def pump(self) -> list[discovery_pb2.DiscoveryResponse]:
        out = [discovery_pb2.DiscoveryResponse.FromString(body) for body in self.session.responses()]
        for response in out:
            self.last[response.type_url] = response
        return out


class DeltaClient:
    def __init__(self, cache: XdsCache, **node_metadata: Any) -> None:
        self.session = DeltaSession(cache, ResponseEncoder())
        self._node = node(**node_metadata)

    def request(self, type_url: str, subscribe: Sequence[str] = (), unsubscribe: Sequence[str] = (),
                nonce: str = "", error: str | None = None,
                initial: Mapping[str, str] | None = None) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        request = discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url, node=self._node, resource_names_subscribe=list(subscribe),
            resource_names_unsubscribe=list(unsubscribe), response_nonce=nonce,
            initial_resource_versions=dict(initial or {}))
        if error is not None:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        self.session.receive(request)
        return self.pump()

    def pump(self) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        return [discovery_pb2.DeltaDiscoveryResponse.FromString(body) for body in self.session.responses()]


def names(response: Any) -> list[str]:
    """Resource names in a SotW or delta response."""
    if isinstance(response, discovery_pb2.DeltaDiscoveryResponse):
        return [r.name for r in response.resources]
    return [getattr(unpack(r, response.type_url), "cluster_name", None) or unpack(r, response.type_url).name
            for r in response.resources]


class LoadLoop:
    """Background GET load on host:port until `stop()`, bounded by time; collects every result."""

    def __init__(self, port: int, host: str, max_seconds: float = 60.0, headers: Mapping[str, str] | None = None,
                 ) -> None:
        import threading

        from tests.envoy.harness import LoadResult

        self.result = LoadResult()
        self._port, self._host, self._headers = port, host, dict(headers or {})
        self._max_seconds = max_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LoadLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> Any:
        self._stop.set()
        self._thread.join(timeout=20)
        return self.result

    def _run(self) -> None:
        import time

        from tests.envoy.harness import send_requests

        deadline = time.monotonic() + self._max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            batch = send_requests(self._port, 10, concurrency=2, host=self._host, headers=self._headers,
                                  timeout=10)
            with self.result.lock:
                self.result.answered.update(batch.answered)
                self.result.statuses.update(batch.statuses)
                self.result.failures.extend(batch.failures)
                self.result.attempts += batch.attempts
            self._stop.wait(0.02)
