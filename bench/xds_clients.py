"""Simulated Envoys for the xDS benchmark: N state-of-the-world ADS streams in one process.

Each stream sends a CDS wildcard request, ACKs every response, subscribes to EDS for the clusters
the CDS response named, and ACKs every EDS response. Each stream has its own channel (its own
TCP connection), as separate Envoys would. Run in a separate process from the server (spawned by
`bench.xds_scenario`), so client work does not count as server CPU or memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from agent.sinks.xds.types import CDS, EDS

METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
RAMP_BATCH = 50  # streams opened at once: a burst of 1,000 connects overflows the listen backlog


async def _stream(target: str, index: int, opened: asyncio.Event) -> None:
    # A channel argument unique to the stream stops gRPC from sharing one connection between channels.
    async with grpc.aio.insecure_channel(target, options=[("bench.stream", index)]) as channel:
        # Raw bytes in: an ACK needs only the header fields, and a real Envoy parses in C++, so the
        # clients should cost as little CPU as possible next to the server they measure.
        call = channel.stream_stream(METHOD, request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString)()
        node = base_pb2.Node(id=f"bench-{index}", cluster="bench")
        await _sotw_marked(call, index, node, None, opened)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _header(body: bytes) -> tuple[str, str, str]:
    """version_info (1), type_url (4) and nonce (5) of a DiscoveryResponse, skipping the resources."""
    fields: dict[int, str] = {}
    pos = 0
    while pos < len(body):
        key, pos = _varint(body, pos)
        if key & 7 != 2:  # every DiscoveryResponse field the server sets is length-delimited
            raise ValueError(f"unexpected wire type in field {key >> 3}")
        length, pos = _varint(body, pos)
        if key >> 3 in (1, 4, 5):
            fields[key >> 3] = body[pos:pos + length].decode()
        pos += length
    return fields.get(1, ""), fields.get(4, ""), fields.get(5, "")


def _cluster_names(body: bytes) -> list[str]:
    names = []
    for packed in discovery_pb2.DiscoveryResponse.FromString(body).resources:
        cluster = cluster_pb2.Cluster()
        packed.Unpack(cluster)
        names.append(cluster.name)
    return names


async def _main(target: str, first: int, count: int, control: Connection) -> None:
    tasks: list[asyncio.Task[None]] = []
    for start in range(first, first + count, RAMP_BATCH):
        batch = [asyncio.Event() for _ in range(min(RAMP_BATCH, first + count - start))]
        tasks.extend(asyncio.create_task(_stream(target, start + i, event)) for i, event in enumerate(batch))
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in batch)), timeout=30)
    control.send("opened")
    # Run until the scenario says stop (or goes away).
    await asyncio.get_running_loop().run_in_executor(None, _serve_control, control)
    for task in tasks:
        task.cancel()
    with contextlib.suppress(BaseException):
        await asyncio.gather(*tasks, return_exceptions=True)


def _serve_control(control: Connection) -> None:
    """Answer "cpu" with this process's CPU seconds so far; return on "stop" or when the pipe closes."""
    with contextlib.suppress(EOFError, OSError):
        while control.recv() == "cpu":
            usage = resource.getrusage(resource.RUSAGE_SELF)
            control.send(usage.ru_utime + usage.ru_stime)


def run_clients(target: str, first: int, count: int, control: Connection) -> None:
    """Process entry point: open `count` streams to `target`, report "opened", run until told to stop."""
    asyncio.run(_main(target, first, count, control))


# -- Clients that time pushes themselves (bench.xds_compare: any server, ours or a reference) ------------
#
# The harness "arms" every stream, makes one change on the server, and waits: each stream records the
# moment it has written the ACK of the first EDS response after arming. CLOCK_MONOTONIC is one clock for
# every process on the machine, so the harness subtracts its own time of the change from these.

DELTA_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"


class Marks:
    """Per-stream "next EDS response" timestamps (used on the clients' event loop only)."""

    def __init__(self, count: int) -> None:
        self.armed = [True] * count  # armed from the start: the first wait is the initial sync
        self.times: list[float] = []
        self.largest_eds = 0  # bytes of the largest EDS response (to compare what the servers send)
        self.all_done = threading.Event()

    def arm(self) -> None:
        self.armed = [True] * len(self.armed)
        self.times = []
        self.all_done.clear()

    def hit(self, index: int, size: int) -> None:
        now = time.monotonic()
        self.largest_eds = max(self.largest_eds, size)
        if self.armed[index]:
            self.armed[index] = False
            self.times.append(now)
            if len(self.times) == len(self.armed):
                self.all_done.set()


async def _sotw_marked(call: Any, index: int, node: base_pb2.Node, marks: Marks | None,
                       opened: asyncio.Event | None = None) -> None:
    """CDS wildcard, EDS for the clusters it names, every response ACKed; EDS responses hit `marks` if any."""
    await call.write(discovery_pb2.DiscoveryRequest(type_url=CDS, node=node))
    if opened is not None:
        opened.set()
    names: list[str] = []
    while True:
        body = await call.read()
        if body is grpc.aio.EOF:
            return
        version_info, type_url, nonce = _header(body)
        if type_url == CDS:
            first = not names
            names = sorted(_cluster_names(body))
            await call.write(discovery_pb2.DiscoveryRequest(type_url=CDS, version_info=version_info,
                                                            response_nonce=nonce))
            if first:
                await call.write(discovery_pb2.DiscoveryRequest(type_url=EDS, resource_names=names))
        else:
            await call.write(discovery_pb2.DiscoveryRequest(
                type_url=type_url, version_info=version_info, resource_names=names, response_nonce=nonce))
            if type_url == EDS and marks is not None:
                marks.hit(index, len(body))


async def _delta_marked(call: Any, index: int, node: base_pb2.Node, marks: Marks) -> None:
    await call.write(discovery_pb2.DeltaDiscoveryRequest(type_url=CDS, node=node))  # wildcard
    subscribed = False
    while True:
        body = await call.read()
        if body is grpc.aio.EOF:
            return
        _, type_url, nonce = _header(body)
        await call.write(discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, response_nonce=nonce))
        if type_url == CDS and not subscribed:
            subscribed = True
            names = sorted(r.name for r in discovery_pb2.DeltaDiscoveryResponse.FromString(body).resources)
            await call.write(discovery_pb2.DeltaDiscoveryRequest(type_url=EDS, resource_names_subscribe=names))
        elif type_url == EDS:
            marks.hit(index, len(body))


# Like Envoy's HTTP/2 client: no BDP pings, and a large fixed window (Envoy's default is 256 MiB), so a
# server is not made to answer pings or wait for window updates that a real Envoy would not cause.
ENVOY_LIKE = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 64 << 20)]


async def _marked_stream(target: str, api: str, index: int, local: int, marks: Marks,
                         opened: asyncio.Event) -> None:
    async with grpc.aio.insecure_channel(target, options=[("bench.stream", index), *ENVOY_LIKE]) as channel:
        node = base_pb2.Node(id=f"bench-{index}", cluster="bench")
        if api == "delta":
            call = channel.stream_stream(
                DELTA_METHOD, request_serializer=discovery_pb2.DeltaDiscoveryRequest.SerializeToString)()
            opened.set()
            await _delta_marked(call, local, node, marks)
        else:
            call = channel.stream_stream(
                METHOD, request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString)()
            opened.set()
            await _sotw_marked(call, local, node, marks)


async def _marked_main(target: str, api: str, first: int, count: int, control: Connection) -> None:
    loop = asyncio.get_running_loop()
    marks = Marks(count)
    tasks: list[asyncio.Task[None]] = []
    for start in range(first, first + count, RAMP_BATCH):
        batch = [asyncio.Event() for _ in range(min(RAMP_BATCH, first + count - start))]
        tasks.extend(asyncio.create_task(_marked_stream(target, api, start + i, start + i - first, marks, event))
                     for i, event in enumerate(batch))
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in batch)), timeout=30)
    control.send("opened")
    await loop.run_in_executor(None, _serve_marks, control, marks, loop)
    for task in tasks:
        task.cancel()
    with contextlib.suppress(BaseException):
        await asyncio.gather(*tasks, return_exceptions=True)


def _serve_marks(control: Connection, marks: Marks, loop: asyncio.AbstractEventLoop) -> None:
    """Commands: "arm" -> "armed"; ("wait", seconds) -> ("times", [...], largest EDS bytes) or ("timeout",
    streams done); "cpu" -> CPU seconds; "stop" (or the pipe closing) ends the clients."""
    with contextlib.suppress(EOFError, OSError):
        while True:
            command = control.recv()
            if command == "arm":
                armed = threading.Event()
                loop.call_soon_threadsafe(_arm, marks, armed)
                armed.wait(10)
                control.send("armed")
            elif isinstance(command, tuple) and command[0] == "wait":
                if marks.all_done.wait(command[1]):
                    control.send(("times", list(marks.times), marks.largest_eds))
                else:
                    control.send(("timeout", len(marks.times)))
            elif command == "cpu":
                usage = resource.getrusage(resource.RUSAGE_SELF)
                control.send(usage.ru_utime + usage.ru_stime)
            else:
                return


def _arm(marks: Marks, armed: threading.Event) -> None:
    marks.arm()
    armed.set()


def run_marked_clients(target: str, api: str, first: int, count: int, control: Connection) -> None:
    """Process entry point: `count` SotW or delta ("sotw" / "delta") streams that time EDS pushes."""
    asyncio.run(_marked_main(target, api, first, count, control))
