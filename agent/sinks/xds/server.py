"""`XdsServer`: envoy.service.discovery.v3.AggregatedDiscoveryService on grpc.aio, in its own thread.

Each stream runs one loop over an inbox fed by a reader task (Envoy's requests) and by the cache
(a "something changed" marker, coalesced); after draining the inbox it asks its session what to
send. Responses are pre-encoded bytes (the method's serializer is the identity), so the bytes of a
resource are made once per version however many streams carry them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2

from agent.sinks.xds.cache import CacheSnapshot, XdsCache
from agent.sinks.xds.delta import DeltaSession
from agent.sinks.xds.encode import ResponseEncoder
from agent.sinks.xds.metrics import STREAMS
from agent.sinks.xds.session import AckListener, Session
from agent.sinks.xds.sotw import SotwSession

log = logging.getLogger(__name__)

SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
_WAKE = object()
_END = object()
# Keepalive detects dead Envoys whose connection vanished without a FIN (node crash, partition).
SERVER_OPTIONS = [
    # gRPC binds with SO_REUSEPORT by default: a second agent on the same port would silently take
    # half the Envoys. Fail to start instead.
    ("grpc.so_reuseport", 0),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


class _Stream:
    def __init__(self) -> None:
        self.inbox: asyncio.Queue[object] = asyncio.Queue()
        self.wake_pending = False

    def wake(self) -> None:
        if not self.wake_pending:
            self.wake_pending = True
            self.inbox.put_nowait(_WAKE)


class XdsServer:
    def __init__(self, cache: XdsCache, address: str = "127.0.0.1", port: int = 18000,
                 credentials: grpc.ServerCredentials | None = None, on_ack: AckListener | None = None) -> None:
        self._cache = cache
        self._address = address
        self._requested_port = port
        self._credentials = credentials
        self._on_ack = on_ack
        self._encoder = ResponseEncoder()
        self._streams: set[_Stream] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._stopping: asyncio.Event | None = None
        self._grace = 1.0
        self._unwatch: Callable[[], None] | None = None
        self.port = 0

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> int:
        """Bind and serve; returns the bound port. Raises if the port cannot be bound."""
        self._thread = threading.Thread(target=self._run, name="xds-server", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise RuntimeError("xDS server did not start")
        if self._start_error is not None:
            raise self._start_error
        self._unwatch = self._cache.watch(self._on_cache_change)
        return self.port

    def stop(self, grace: float = 1.0) -> None:
        if self._unwatch is not None:
            self._unwatch()
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            self._grace = grace
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(timeout=grace + 5)

    @property
    def stream_count(self) -> int:
        return len(self._streams)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:
            if not self._started.is_set():
                self._start_error = exc
                self._started.set()
            else:
                log.exception("xDS server failed")
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        server = grpc.aio.server(options=SERVER_OPTIONS)
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {
            "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                self._sotw, request_deserializer=discovery_pb2.DiscoveryRequest.FromString),
            "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                self._delta, request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString),
        })])
        target = f"[{self._address}]:{self._requested_port}" if ":" in self._address \
            else f"{self._address}:{self._requested_port}"
        port = server.add_secure_port(target, self._credentials) if self._credentials is not None \
            else server.add_insecure_port(target)
        if port == 0:
            raise OSError(f"cannot bind the xDS server to {target}")
        await server.start()
        self.port = port
        log.info("xDS server listening", extra={"address": target, "port": port,
                                                "tls": self._credentials is not None})
        self._started.set()
        await self._stopping.wait()
        await server.stop(self._grace)

    # -- cache changes --------------------------------------------------------------------------------

    def _on_cache_change(self, _snapshot: CacheSnapshot) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._wake_all)

    def _wake_all(self) -> None:
        for stream in self._streams:
            stream.wake()

    # -- streams ------------------------------------------------------------------------------------

    async def _sotw(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await self._run_stream(SotwSession(self._cache, self._encoder, self._on_ack, context.peer()), requests,
                               context)

    async def _delta(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await self._run_stream(DeltaSession(self._cache, self._encoder, self._on_ack, context.peer()), requests,
                               context)

    async def _run_stream(self, session: Session, requests: AsyncIterator[Any],
                          context: grpc.aio.ServicerContext[Any, Any]) -> None:
        stream = _Stream()
        self._streams.add(stream)
        STREAMS.labels(session.api).inc()
        reader = asyncio.create_task(self._read(requests, stream.inbox))
        try:
            while True:
                items = [await stream.inbox.get()]
                while not stream.inbox.empty():
                    items.append(stream.inbox.get_nowait())
                for item in items:
                    if item is _END:
                        return
                    if isinstance(item, BaseException):
                        log.debug("xDS stream read failed: %s", item, extra={"node": session.node_id})
                        return
                    if item is _WAKE:
                        stream.wake_pending = False
                    else:
                        session.receive(item)
                for body in session.responses():
                    await context.write(body)
        finally:
            reader.cancel()
            self._streams.discard(stream)
            STREAMS.labels(session.api).dec()
            session.close()

    @staticmethod
    async def _read(requests: AsyncIterator[Any], inbox: asyncio.Queue[object]) -> None:
        try:
            async for request in requests:
                inbox.put_nowait(request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            inbox.put_nowait(exc)
            return
        inbox.put_nowait(_END)
