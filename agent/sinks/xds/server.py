"""`XdsServer`: envoy.service.discovery.v3.AggregatedDiscoveryService on grpc.aio, in its own thread.

Each stream handles Envoy's requests as it reads them and, after each, asks its session what to
send; a cache change wakes every stream to do the same. Responses are pre-encoded bytes (the
method's serializer is the identity), so a response is encoded once however many streams carry it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
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
# Keepalive detects dead Envoys whose connection vanished without a FIN (node crash, partition).
SERVER_OPTIONS = [
    # gRPC binds with SO_REUSEPORT by default: a second agent on the same port would silently take
    # half the Envoys. Fail to start instead.
    ("grpc.so_reuseport", 0),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # No BDP pings: they size the window for what Envoy sends us (small requests), and each one costs a
    # PING, its ACK and a few thread hand-offs per stream per push (strace: ~30 % of the syscalls).
    ("grpc.http2.bdp_probe", 0),
]
# The cyclic GC's young generation (700 allocations by default) is collected ~25 times per push to 1,000
# streams: each collection finds the writes then in flight and promotes them, so the old generations fill
# with objects that die a moment later and the whole heap is scanned every push or two (0.2 s of GC per push
# in the bench). With 50,000, a push sees a few young collections and almost no full one (-15-20 % CPU per
# push); what it costs is a few MB more before cyclic garbage is freed. Process-wide: the thresholds are only
# ever raised, never lowered below what the process set (a threshold of 0, automatic collection off, stays).
GC_THRESHOLDS = (50_000, 20, 20)


def raise_gc_thresholds() -> None:
    current = gc.get_threshold()
    if current[0] == 0:
        return
    gc.set_threshold(*(max(now, wanted) for now, wanted in zip(current, GC_THRESHOLDS, strict=True)))


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The server thread's event loop: uvloop's when it is installed, else asyncio's.

    grpc.aio hands every completion to the loop (two per stream per push: the response written, the ACK
    read), and each wakes a stream's task: at 1,000 streams that is the loop's own Python (`_run_once`,
    handles, futures) thousands of times per push. uvloop runs the same in C: 0.85-1.09x (median 0.94x)
    asyncio's CPU per push at 1,000 streams (docs/benchmarks.md). It is not a dependency of the agent.
    """
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


class _Stream:
    """One open stream: its session, and a flush that writes whatever the session has to send.

    Flushes never overlap (gRPC allows one write at a time per call); a flush asked for while one
    runs makes that one go round again, so nothing is missed and nothing is written twice.
    """

    def __init__(self, session: Session, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.session = session
        self._context = context
        self._flushing = False
        self._again = False
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """The cache changed (called on the event loop)."""
        if self._flushing:
            self._again = True
        elif self._task is None or self._task.done():
            self._task = asyncio.create_task(self.flush())
            self._task.add_done_callback(_consume)

    async def flush(self) -> None:
        if self._flushing:
            self._again = True
            return
        self._flushing = True
        try:
            while True:
                self._again = False
                for body in self.session.responses():
                    await self._context.write(body)
                if not self._again:
                    return
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, grpc.aio.InternalError) as exc:
            # The peer went away, possibly in the middle of a write (grpc then fails the pending batch with
            # an InternalError): routine, and the call is dead, so there is nothing to abort.
            log.debug("xDS stream write ended: %s", exc, extra={"node": self.session.node_id})
        except Exception:
            if self._context.done():
                log.debug("xDS stream ended during a write", extra={"node": self.session.node_id})
                return
            # A bug, not the peer: end the stream so that Envoy reconnects and starts over.
            log.exception("xDS stream failed", extra={"node": self.session.node_id})
            await self._context.abort(grpc.StatusCode.INTERNAL, "xDS server error")
        finally:
            self._flushing = False

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()


def _consume(task: asyncio.Task[None]) -> None:
    """Collect a flush task's outcome (an abort already ended the stream and was logged)."""
    if not task.cancelled():
        task.exception()


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
        raise_gc_thresholds()
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
        loop = new_event_loop()
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
            # The streams' tasks end once grpc has cancelled their calls; let them, or they are destroyed
            # pending when the loop closes (and grpc logs that as an error). Bounded: a stuck one is left.
            pending = asyncio.all_tasks(loop)
            if pending:
                with contextlib.suppress(BaseException):
                    loop.run_until_complete(asyncio.wait(pending, timeout=2.0))
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
        # Requests are handled where they are read, and a cache change starts a flush task: no queue
        # or extra task switch per message (the per-stream cost dominates with thousands of streams).
        stream = _Stream(session, context)
        self._streams.add(stream)
        STREAMS.labels(session.api).inc()
        try:
            async for request in requests:
                session.receive(request)
                await stream.flush()
        except grpc.aio.AioRpcError as exc:
            log.debug("xDS stream read ended: %s", exc, extra={"node": session.node_id})
        finally:
            stream.cancel()
            self._streams.discard(stream)
            STREAMS.labels(session.api).dec()
            session.close()
