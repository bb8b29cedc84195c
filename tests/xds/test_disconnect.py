"""The xDS server survives clients (raw gRPC, or a SIGKILLed Envoy) that disconnect mid-push, SotW and delta.

Clients get a small HTTP/2 window, so an unread push stalls the server's write until they go. Afterwards
the streams gauge, the server's streams and the cache's views in use are back, nothing is logged at ERROR,
new clients are served at once, and a healthy client (or a replacement Envoy) gets every version.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import queue
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import grpc
import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.service.discovery.v3 import discovery_pb2 as ds

from agent.config import AgentConfig
from agent.envoy.nodes import ALL, NodeView
from agent.metrics import REGISTRY
from agent.model import Endpoint, Snapshot
from agent.sinks.xds.server import XdsServer
from agent.sinks.xds.sink import XdsSink
from agent.sinks.xds.types import CDS, EDS
from tests.envoy.harness import make_snapshot, wait_until
from tests.xds.conftest import StartAdsEnvoy, StartControlPlane, ads_address
from tests.xds.helpers import names, node, unpack, xds_config

SERVICE = "/envoy.service.discovery.v3.AggregatedDiscoveryService/"
APIS = {"sotw": ("StreamAggregatedResources", ds.DiscoveryRequest, ds.DiscoveryResponse),
        "delta": ("DeltaAggregatedResources", ds.DeltaDiscoveryRequest, ds.DeltaDiscoveryResponse)}
SERVICES = [{"name": f"s{n}"} for n in range(200)]
SUBSCRIPTIONS: dict[str, list[str]] = {CDS: [], EDS: ["s0", "s1"]}  # every cluster; the endpoints of two
WINDOW = 65_535  # HTTP/2's smallest window (for Envoy); pushes are bigger (200 clusters ~90 KB, EDS ~75 KB)
DROPPER = NodeView(listen_address="127.0.9.9")  # the dropping clients' own view in the cache


def streams(api: str) -> float:
    return REGISTRY.get_sample_value("modelarts_agent_xds_streams", {"api": api}) or 0.0


def pushes(type_url: str) -> float:  # counted when a response is made, before it is written
    return REGISTRY.get_sample_value("modelarts_agent_xds_pushes_total", {"type_url": type_url}) or 0.0


def pushes_reach(type_url: str, count: float) -> bool:
    return wait_until(lambda: pushes(type_url) >= count, 5)


def assert_settles(server: XdsServer, api: str, count: int, gauge: float) -> None:
    assert wait_until(lambda: server.stream_count == count and streams(api) == gauge, 10), \
        (server.stream_count, streams(api), gauge)


def wide(version: int) -> list[Endpoint]:  # the 1500 endpoints of s0 and s1; their ports move with `version`
    return [Endpoint(f"127.0.3.{ip}", 2000 + 10 * version + n) for ip in range(1, 251) for n in range(6)]


def snapshot(config: AgentConfig, version: int) -> Snapshot:
    return make_snapshot(config, {"s0": wide(version), "s1": wide(version), **{
        spec.name: [Endpoint("127.0.2.1", 8000)] for spec in config.services[2:]}}, version=version)


def s0_ports(response: Any) -> set[int]:
    delta = isinstance(response, ds.DeltaDiscoveryResponse)
    assignments = [unpack(r.resource if delta else r, EDS) for r in response.resources]
    return {e.endpoint.address.socket_address.port_value for a in assignments if a.cluster_name == "s0"
            for group in a.endpoints for e in group.lb_endpoints}


class Ads:
    """A raw ADS client of either API; with `small_window`, a push it does not read stalls the server's write."""

    opened: ClassVar[list[Ads]] = []  # closed after each test

    def __init__(self, port: int, api: str, small_window: bool = False, timeout: float = 120, **metadata: Any) -> None:
        self.opened.append(self)
        self.delta = api == "delta"
        options = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 16_384)] if small_window else []
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=options)
        method, self._request, response = APIS[api]
        call = self.channel.stream_stream(SERVICE + method, request_serializer=self._request.SerializeToString,
                                          response_deserializer=response.FromString)
        self._node = node("raw", **metadata)
        self._outbox: queue.Queue[Any] = queue.Queue()
        self.responses = call(iter(self._outbox.get, None), timeout=timeout)  # the request side stays open
        self.last: dict[str, Any] = {}

    def send(self, type_url: str, response: Any = None) -> None:
        """Subscribe to `type_url` (SUBSCRIPTIONS), or ACK `response`."""
        fields = {"resource_names_subscribe" if self.delta else "resource_names": SUBSCRIPTIONS[type_url]}
        if response is not None:
            fields = {"response_nonce": response.nonce} if self.delta else {
                **fields, "response_nonce": response.nonce, "version_info": response.version_info}
        self._outbox.put(self._request(type_url=type_url, node=self._node, **fields))

    def read(self, ack: bool = False) -> Any:
        response = next(self.responses)
        self.last[response.type_url] = response
        if ack:
            self.send(response.type_url, response)
        return response

    def sync(self) -> None:
        """Envoy's start-up: every cluster, then the endpoints of s0 and s1, each ACKed."""
        for type_url in (CDS, EDS):
            self.send(type_url)
            self.read(ack=True)

    def follow(self) -> None:
        """Read and ACK every response until the stream ends (at the latest, at its deadline)."""
        with contextlib.suppress(grpc.RpcError):
            for _ in range(100_000):  # bounded; the stream ends long before
                self.read(ack=True)

    def close(self) -> None:
        self.channel.close()
        self._outbox.put(None)


@pytest.fixture(autouse=True)
def _close_clients(start_control_plane: StartControlPlane) -> Iterator[None]:
    """Torn down before the control plane: no stream is left open when a server stops (that logs errors)."""
    gc.collect()  # pending tasks of servers stopped by earlier tests log their errors now, not in this test
    baseline = {api: streams(api) for api in APIS}
    yield
    while Ads.opened:
        Ads.opened.pop().close()
    wait_until(lambda: all(streams(api) <= baseline[api] for api in APIS), 5)


def assert_no_errors(caplog: pytest.LogCaptureFixture) -> None:
    errors = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, f"{len(errors)} ERROR records (tracebacks in the captured log), e.g. {errors[:3]}"


@pytest.mark.parametrize("partly_read", [False, True], ids=["unread", "partly-read"])
@pytest.mark.parametrize("api", list(APIS))
def test_a_client_gone_mid_push_is_released_and_the_server_keeps_serving(
        tmp_path: Path, start_control_plane: StartControlPlane, caplog: pytest.LogCaptureFixture, api: str,
        partly_read: bool) -> None:
    small = xds_config(tmp_path, SERVICES[:2])
    big = small.model_copy(update={"services": xds_config(tmp_path, SERVICES).services})
    sink = start_control_plane(small)
    sink.publish(snapshot(small, 1))
    server, before = sink.server, streams(api)
    assert server is not None
    dropper = Ads(server.port, api, small_window=True, listen_address=DROPPER.listen_address)
    dropper.sync()
    assert_settles(server, api, 1, before + 1)
    assert DROPPER in sink.cache.views_in_use()
    pushed = pushes(EDS)
    sink.update_config(big)
    sink.publish(snapshot(big, 2))  # a push of CDS (200 clusters) then EDS (s0 and s1)
    if partly_read:  # the CDS part, never ACKed (delta sends only the 198 new clusters); the EDS write stalls
        assert len(names(dropper.read())) == (198 if api == "delta" else 200)
    assert pushes_reach(EDS, pushed + 1)  # the push is under way
    dropper.close()
    assert_settles(server, api, 0, before)
    assert wait_until(lambda: DROPPER not in sink.cache.views_in_use(), 5), sink.cache.views_in_use()
    fresh = Ads(server.port, api, timeout=5)  # a stuck server would make it miss this deadline
    fresh.sync()
    assert len(names(fresh.last[CDS])) == 200 and s0_ports(fresh.last[EDS]) == {e.port for e in wide(2)}
    assert_no_errors(caplog)


@pytest.mark.parametrize("api", list(APIS))
def test_fifty_mid_push_disconnects_while_a_healthy_client_follows_every_version(
        tmp_path: Path, start_control_plane: StartControlPlane, caplog: pytest.LogCaptureFixture, api: str) -> None:
    config = xds_config(tmp_path, SERVICES)
    acks: list[tuple[str, int]] = []
    sink = start_control_plane(config, on_ack=lambda type_url, version: acks.append((type_url, version)))
    sink.publish(snapshot(config, 1))
    server, before = sink.server, streams(api)
    assert server is not None and sink.cache.current is not None
    healthy = Ads(server.port, api)
    healthy.sync()
    threading.Thread(target=healthy.follow, daemon=True).start()
    seen: set[tuple[str, str]] = set()
    for version in range(2, 52):
        dropper = Ads(server.port, api, small_window=True, listen_address=DROPPER.listen_address)
        if version % 2:
            dropper.sync()  # then the push below stalls on its EDS
        else:
            cds = pushes(CDS)
            dropper.send(CDS)  # its first response (200 clusters) stalls
            assert pushes_reach(CDS, cds + 1)
        eds = pushes(EDS)
        sink.publish(snapshot(config, version))
        assert pushes_reach(EDS, eds + 1 + version % 2)  # to the healthy client, and to a synced dropper
        dropper.close()
        latest = sink.cache.current.version
        assert wait_until(functools.partial(acks.__contains__, (EDS, latest)), 10), f"no ACK of {version}"
        last = healthy.last[EDS]
        assert s0_ports(last) == {e.port for e in wide(version)}
        assert not healthy.delta or last.system_version_info == str(latest)
        seen.add((last.nonce, last.system_version_info if healthy.delta else last.version_info))
    assert len(seen) == 50  # a new nonce and version every time
    assert_settles(server, api, 1, before + 1)
    assert wait_until(lambda: sink.cache.views_in_use() == [ALL], 5), sink.cache.views_in_use()
    assert_no_errors(caplog)


def small_ads_window(bootstrap: bootstrap_pb2.Bootstrap) -> None:
    """Envoy's connection to the xDS server gets HTTP/2's smallest window, like the raw clients above."""
    for packed in bootstrap.static_resources.clusters[0].typed_extension_protocol_options.values():
        options = http_protocol_options_pb2.HttpProtocolOptions()
        assert packed.Unpack(options)
        http2 = options.explicit_http_config.http2_protocol_options
        http2.initial_stream_window_size.value = http2.initial_connection_window_size.value = WINDOW
        packed.Pack(options)


@pytest.mark.envoy
@pytest.mark.parametrize("api", list(APIS))
def test_envoy_sigkilled_mid_push_is_replaced_by_one_that_converges(
        tmp_path: Path, start_control_plane: StartControlPlane, start_ads_envoy: StartAdsEnvoy,
        caplog: pytest.LogCaptureFixture, api: str) -> None:
    config = xds_config(tmp_path, SERVICES)
    sink = start_control_plane(config)
    sink.publish(snapshot(config, 1))
    server, before = sink.server, streams(api)
    assert server is not None
    first = start_ads_envoy(ads_address(config), node_id="edge", delta=api == "delta", tweak=small_ads_window)
    first.wait_for_hosts({"s0": {f"{e.ip}:{e.port}" for e in wide(1)}, "s199": {"127.0.2.1:8000"}}, timeout=15)
    assert_settles(server, api, 1, before + 1)
    assert first._proc is not None
    first._proc.send_signal(signal.SIGSTOP)  # it reads nothing more: the push below stays in flight
    pushed = pushes(EDS)
    sink.publish(snapshot(config, 2))
    assert pushes_reach(EDS, pushed + 1)
    first._proc.send_signal(signal.SIGKILL)
    first._proc.wait(5)
    sink.publish(snapshot(config, 3))  # the latest: the killed Envoy never saw it
    assert_settles(server, api, 0, before)
    second = start_ads_envoy(ads_address(config), node_id="edge", delta=api == "delta")
    second.wait_for_hosts({"s0": {f"{e.ip}:{e.port}" for e in wide(3)}, "s199": {"127.0.2.1:8000"}}, timeout=15)
    assert_settles(server, api, 1, before + 1)
    assert not any(second.rejected_updates().values())
    assert_no_errors(caplog)


@pytest.mark.parametrize("api", list(APIS))
def test_stopping_the_server_under_open_streams_logs_no_error(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, api: str) -> None:
    """Shutdown (SIGTERM of the agent) with Envoys still connected is routine: streams end, nothing is
    left pending on a closed event loop to be reported as an error later."""
    config = xds_config(tmp_path, SERVICES[:2])
    sink = XdsSink(config)
    sink.start()
    sink.publish(snapshot(config, 1))
    assert sink.server is not None
    clients = [Ads(sink.server.port, api, timeout=30) for _ in range(3)]
    for client in clients:
        client.sync()
    sink.close(grace=0)
    gc.collect()  # a task destroyed while pending is reported when it is collected
    assert_no_errors(caplog)
