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
from multiprocessing.connection import Connection

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
        await call.write(discovery_pb2.DiscoveryRequest(type_url=CDS, node=node))
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
                await call.write(discovery_pb2.DiscoveryRequest(
                    type_url=CDS, version_info=version_info, response_nonce=nonce))
                if first:
                    await call.write(discovery_pb2.DiscoveryRequest(type_url=EDS, resource_names=names))
            else:
                await call.write(discovery_pb2.DiscoveryRequest(
                    type_url=type_url, version_info=version_info, resource_names=names, response_nonce=nonce))


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
