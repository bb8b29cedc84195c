"""Fake inference instances (real HTTP, HTTPS, gRPC and TCP servers) and the fleet of services holding them.

Each instance listens on its own IP (127.0.0.x by default), as instances on a peered VPC would.
Life cycle, as the agent sees it through the endpoints API:

- running: listening, listed.
- killed: listener closed and connections dropped (clients get connection refused), but still
  listed, since the platform has not noticed yet.
- draining (scale-in / remove): unlisted at once; the listener closes, in-flight requests finish
  (up to `drain_timeout_seconds`), then the instance is stopped for good.

What an instance speaks follows its schema, as ModelArts reports it:

- http / https: aiohttp; JSON on any path, `/health`, SSE token streams on `/stream` (sse.py) and a
  WebSocket on `/ws` (websocket.py).
- grpc: grpcio over cleartext HTTP/2: unary Predict, server-streaming Generate, grpc.health.v1
  (grpc_instance.py).
- tcp: an echo server.

Fault knobs (latency, error rate, health, concurrency, kill, drain) apply to every protocol; token
streams also take `stream` settings (first token, interval, reset after N tokens; streaming.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ipaddress
import logging
import random
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal, Protocol

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from modelarts_emulator.config import EmulatorConfig, LatencyConfig, ServiceConfig, StreamConfig
from modelarts_emulator.grpc_instance import GrpcListener
from modelarts_emulator.slot_clock import Hold, SlotClock
from modelarts_emulator.sse import serve_sse
from modelarts_emulator.streaming import StreamCounters
from modelarts_emulator.tls import CertificateAuthority
from modelarts_emulator.websocket import serve_websocket

log = logging.getLogger("modelarts_emulator.instances")

InstanceState = Literal["running", "killed", "draining", "stopped"]
# The slot the current request holds (set by Instance.slot, read by Instance.begin in the same task).
_HOLD: contextvars.ContextVar[Hold | None] = contextvars.ContextVar("emulator_slot_hold", default=None)


class InstanceInfo(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    instance_id: str
    service_id: str
    service_name: str
    schema_: str = Field(alias="schema")
    ip: str
    port: int
    address: str
    state: InstanceState
    listed: bool
    healthy: bool
    served: int  # requests answered (including injected errors), health checks excluded
    errors: int
    in_flight: int  # being served now (holding a concurrency slot)
    queued: int  # waiting for a concurrency slot
    max_in_flight: int
    health_checks: int
    connections: int  # open client connections (gRPC: distinct peers with a call in flight)
    latency: LatencyConfig
    error_rate: float
    concurrency: int | None
    stream: StreamConfig
    streams_started: int  # token streams (SSE, gRPC Generate, WebSocket generate)
    streams_active: int
    streams_completed: int
    streams_cancelled: int  # the client or the proxy went away mid-stream (the upstream saw the cancel)
    streams_reset: int  # ended by the injected mid-stream failure
    streams_failed: int
    tokens_sent: int
    websockets: int  # open WebSocket connections

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class Listener(Protocol):
    async def start(self) -> int: ...
    async def kill(self) -> None: ...
    async def drain(self, timeout: float) -> None: ...
    def connections(self) -> int: ...


class HttpListener:
    """One aiohttp app on one address, stoppable abruptly (kill) or gracefully (drain)."""

    def __init__(self, app: web.Application, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._ssl = ssl_context
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        # handler_cancellation: a dropped client cancels its handler, so kill() ends work promptly.
        runner = web.AppRunner(self._app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port, ssl_context=self._ssl, reuse_address=True)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        addr = runner.addresses[0]
        self._port = int(addr[1])
        return self._port

    async def kill(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        for site in list(runner.sites):
            await site.stop()
        if runner.server is not None:
            for conn in runner.server.connections:
                if conn.transport is not None:
                    conn.transport.abort()
        await runner.cleanup()

    async def drain(self, timeout: float) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        runner._shutdown_timeout = timeout  # graceful: in-flight handlers get this long
        await runner.cleanup()

    def connections(self) -> int:
        if self._runner is None or self._runner.server is None:
            return 0
        return len(self._runner.server.connections)


class TcpEchoListener:
    """Writes `instance_id\\n` on connect, then echoes whatever it receives."""

    def __init__(self, instance_id: str, host: str, port: int, on_connect: Callable[[], None]) -> None:
        self._greeting = f"{instance_id}\n".encode()
        self._host = host
        self._port = port
        self._on_connect = on_connect
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, self._host, self._port, reuse_address=True)
        self._port = int(self._server.sockets[0].getsockname()[1])
        return self._port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        self._on_connect()
        try:
            writer.write(self._greeting)
            await writer.drain()
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def kill(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        if server is not None:
            # Only after the aborts: from Python 3.12 this waits for open connections too.
            await server.wait_closed()

    async def drain(self, timeout: float) -> None:
        if self._server is not None:
            self._server.close()  # stop accepting; kill() below waits for the close
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._writers and loop.time() < deadline:
            await asyncio.sleep(0.05)
        await self.kill()

    def connections(self) -> int:
        return len(self._writers)


def draw_latency(latency: LatencyConfig, rng: random.Random) -> float:
    """Seconds to wait before answering: base plus jitter from the configured distribution."""
    jitter = latency.jitter_ms
    extra = 0.0
    if jitter > 0:
        if latency.distribution == "exponential":
            extra = rng.expovariate(1.0 / jitter)
        elif latency.distribution == "lognormal":
            extra = jitter * rng.lognormvariate(-latency.sigma ** 2 / 2, latency.sigma)  # mean = jitter
        elif latency.distribution == "uniform":
            extra = rng.uniform(0.0, 2.0 * jitter)  # mean = jitter, like the exponential
        elif latency.distribution == "normal":
            extra = rng.gauss(0.0, jitter)
    return max(0.0, latency.base_ms + extra) / 1000.0


class Instance:
    def __init__(
        self, instance_id: str, service: ServiceRuntime, ip: str, port: int,
        ca: CertificateAuthority, rng: random.Random,
    ) -> None:
        cfg = service.config
        self.instance_id = instance_id
        self.service = service
        self.ip = ip
        self.port = port
        self.schema = cfg.schema_
        self.listed = False
        self.state: InstanceState = "stopped"
        self.healthy = True
        self.latency = cfg.latency.model_copy()
        self.error_rate = cfg.error_rate
        self.concurrency = cfg.concurrency
        self.stream = cfg.stream.model_copy()
        self.streams = StreamCounters()
        self.websockets = 0
        self._slots = asyncio.Semaphore(cfg.concurrency) if cfg.concurrency else None
        self._clock = SlotClock(cfg.concurrency) if cfg.concurrency else None
        self._ca = ca
        self._rng = rng
        self._ssl: ssl.SSLContext | None = None
        self._listener: Listener | None = None
        self.served = self.errors = self.in_flight = self.queued = self.max_in_flight = self.health_checks = 0

    @property
    def address(self) -> str:
        host = f"[{self.ip}]" if ipaddress.ip_address(self.ip).version == 6 else self.ip
        return f"{host}:{self.port}"

    def endpoint(self) -> dict[str, Any]:
        return {"schema": self.schema, "ip": self.ip, "port": self.port}

    def _make_listener(self) -> Listener:
        if self.schema == "tcp":
            return TcpEchoListener(self.instance_id, self.ip, self.port, self._count_connection)
        if self.schema == "grpc":
            return GrpcListener(self, self.ip, self.port)
        if self.schema == "https" and self._ssl is None:
            self._ssl = self._ca.server_context(self.instance_id, [self.ip])
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return HttpListener(app, self.ip, self.port, self._ssl)

    def _count_connection(self) -> None:
        self.served += 1  # for TCP, a "request" is a connection

    async def start(self) -> None:
        listener = self._make_listener()
        self.port = await listener.start()
        self._listener = listener
        self.state = "running"

    async def kill(self) -> None:
        if self._listener is not None:
            await self._listener.kill()
            self._listener = None
        if self.state == "running":
            self.state = "killed"

    async def revive(self) -> None:
        if self.state == "killed":
            await self.start()

    async def retire(self, drain_timeout: float) -> None:
        """Unlist now; stop after in-flight requests finish (or the timeout passes)."""
        self.listed = False
        listener, self._listener = self._listener, None
        if listener is not None:
            self.state = "draining"
            try:
                await listener.drain(drain_timeout)
            finally:
                await listener.kill()
        self.state = "stopped"

    def info(self) -> InstanceInfo:
        return InstanceInfo(
            instance_id=self.instance_id, service_id=self.service.service_id,
            service_name=self.service.config.name, schema=self.schema, ip=self.ip, port=self.port,
            address=self.address, state=self.state, listed=self.listed, healthy=self.healthy,
            served=self.served, errors=self.errors, in_flight=self.in_flight, queued=self.queued,
            max_in_flight=self.max_in_flight, health_checks=self.health_checks,
            connections=self._listener.connections() if self._listener else 0,
            latency=self.latency, error_rate=self.error_rate, concurrency=self.concurrency,
            stream=self.stream, streams_started=self.streams.started, streams_active=self.streams.active,
            streams_completed=self.streams.completed, streams_cancelled=self.streams.cancelled,
            streams_reset=self.streams.reset, streams_failed=self.streams.failed, tokens_sent=self.streams.tokens,
            websockets=self.websockets,
        )

    # --- HTTP serving -------------------------------------------------------------------

    def _identity(self, request: web.Request) -> dict[str, Any]:
        return {
            "instance_id": self.instance_id,
            "service_id": self.service.service_id,
            "service_name": self.service.config.name,
            "address": self.address,
            "path": request.path,
            "method": request.method,
        }

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one concurrency slot; extra requests queue here instead of being refused. The slots keep an
        ideal clock (slot_clock.py), so the event loop's lag does not eat the instance's capacity."""
        loop = asyncio.get_running_loop()
        asked = loop.time()
        self.queued += 1
        try:
            if self._slots is not None:
                await self._slots.acquire()
        finally:
            self.queued -= 1
        hold = self._clock.take(asked) if self._clock is not None else None
        token = _HOLD.set(hold)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            yield
        finally:
            _HOLD.reset(token)
            self.in_flight -= 1
            if self._slots is not None:
                if self._clock is not None and hold is not None:
                    self._clock.give_back(hold, loop.time())
                self._slots.release()

    async def begin(self, extra_delay_ms: str | None) -> bool:
        """Start serving one request or stream: wait the drawn latency, count it; True = answer an injected error."""
        delay = draw_latency(self.latency, self._rng)
        if extra_delay_ms:
            with contextlib.suppress(ValueError):
                delay += max(0.0, float(extra_delay_ms)) / 1000.0
        hold = _HOLD.get()
        if hold is None:
            await asyncio.sleep(delay)
        else:  # due at its ideal start + the service time (slot_clock.py)
            loop = asyncio.get_running_loop()
            hold.due = hold.start + delay
            await asyncio.sleep(max(0.0, hold.due - loop.time()))
            hold.woke = loop.time()
        self.served += 1
        if self.error_rate and self._rng.random() < self.error_rate:
            self.errors += 1
            return True
        return False

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        headers = {"X-Instance-Id": self.instance_id}
        if request.path == "/health" and request.method == "GET":
            self.health_checks += 1
            status = 200 if self.healthy else 503
            body = {"status": "ok" if self.healthy else "unhealthy", "instance_id": self.instance_id}
            return web.json_response(body, status=status, headers=headers)
        if request.path == "/ws" and request.headers.get("Upgrade", "").lower() == "websocket":
            return await serve_websocket(request, self, headers)
        body_bytes = 0
        async for chunk in request.content.iter_any():  # count, don't buffer: bodies may be huge
            body_bytes += len(chunk)
        async with self.slot():
            if await self.begin(request.headers.get("X-Emulator-Delay-Ms")):
                body = {"error": "injected error", **self._identity(request)}
                return web.json_response(body, status=500, headers=headers)
            if request.path == "/stream":
                return await serve_sse(request, self, headers)
            return web.json_response({**self._identity(request), "body_bytes": body_bytes}, headers=headers)


class AddressAllocator:
    """Hands out 127.0.0.x (from the configured base) in order, never twice, skipping taken ones."""

    def __init__(self, base: str, reserved: set[str]) -> None:
        self._next = int(ipaddress.IPv4Address(base))
        self._reserved = reserved

    def allocate(self, in_use: set[str]) -> str:
        while True:
            addr = str(ipaddress.IPv4Address(self._next))
            self._next += 1
            if addr not in in_use and addr not in self._reserved and not addr.endswith((".0", ".255")):
                return addr


class ServiceRuntime:
    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.service_id = config.service_id
        self.status: str = config.status
        self.instances: list[Instance] = []  # creation order; retired ones are dropped from here

    def listed(self) -> list[Instance]:
        return [i for i in self.instances if i.listed]

    def describe(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "name": cfg.name, "service_id": self.service_id, "project_id": cfg.project_id,
            "status": self.status, "schema": cfg.schema_, "port": cfg.port,
            "instances": [i.info().wire() for i in self.instances],
        }


class FleetError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Fleet:
    """All services and instances; every method runs on the emulator's event loop."""

    def __init__(self, config: EmulatorConfig, ca: CertificateAuthority) -> None:
        self._config = config
        self._ca = ca
        self._rng = random.Random(config.seed)
        self._alloc = AddressAllocator(config.instance_address_base, {config.host})
        self.services: dict[str, ServiceRuntime] = {}
        self._retired: list[Instance] = []
        self._seq = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def _in_use(self) -> set[str]:
        return {i.ip for s in self.services.values() for i in s.instances} | {
            i.ip for i in self._retired if i.state != "stopped"
        }

    def all_instances(self) -> list[Instance]:
        return [i for s in self.services.values() for i in s.instances] + self._retired

    def instance(self, instance_id: str) -> Instance:
        for inst in self.all_instances():
            if inst.instance_id == instance_id:
                return inst
        raise FleetError(404, f"no instance {instance_id!r}")

    def service(self, service_id: str) -> ServiceRuntime:
        svc = self.services.get(service_id)
        if svc is None:
            raise FleetError(404, f"no service {service_id!r}")
        return svc

    async def add_service(self, config: ServiceConfig) -> ServiceRuntime:
        if config.project_id is None:
            config.project_id = self._config.users[0].project_id
        if config.service_id in self.services or any(s.config.name == config.name for s in self.services.values()):
            raise FleetError(409, f"service {config.name!r} / {config.service_id!r} already exists")
        svc = ServiceRuntime(config)
        self.services[svc.service_id] = svc
        try:
            await self.scale(svc.service_id, config.instances)
        except BaseException:
            await self.remove_service(svc.service_id)
            raise
        return svc

    async def remove_service(self, service_id: str) -> None:
        svc = self.service(service_id)
        for inst in svc.instances:
            inst.listed = False
            await inst.kill()
            inst.state = "stopped"
        self._retired.extend(svc.instances)
        del self.services[service_id]

    def _next_address(self, svc: ServiceRuntime) -> str:
        in_use = self._in_use()
        if svc.config.shared_address is not None:
            return svc.config.shared_address
        explicit = svc.config.bind_addresses
        if explicit is None:
            return self._alloc.allocate(in_use)
        for addr in explicit:
            if addr not in in_use:
                return addr
        raise FleetError(409, f"service {svc.config.name!r} has no free bind address left")

    async def scale(self, service_id: str, count: int, wait: bool = False) -> ServiceRuntime:
        """Grow by starting new instances (listed once listening); shrink by retiring the newest."""
        svc = self.service(service_id)
        if count < 0:
            raise FleetError(400, "instances must be >= 0")
        while len(svc.instances) < count:
            self._seq += 1
            inst = Instance(
                f"{svc.config.name}-i{self._seq}", svc, self._next_address(svc), svc.config.port,
                self._ca, random.Random(self._rng.random()),
            )
            try:
                await inst.start()
            except OSError as exc:
                raise FleetError(409, f"cannot listen on {inst.ip}:{inst.port}: {exc.strerror}") from None
            inst.listed = True
            svc.instances.append(inst)
        retiring = []
        while len(svc.instances) > count:
            retiring.append(self._retire(svc.instances[-1]))
        if wait and retiring:
            await asyncio.gather(*retiring, return_exceptions=True)
        return svc

    def _retire(self, inst: Instance) -> asyncio.Task[None]:
        """Unlist at once; drain and stop in the background (so callers see the list change now)."""
        inst.service.instances.remove(inst)
        inst.listed = False
        self._retired.append(inst)
        task = asyncio.create_task(inst.retire(self._config.drain_timeout_seconds))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def remove_instance(self, instance_id: str, wait: bool = False) -> Instance:
        inst = self.instance(instance_id)
        if inst in inst.service.instances:
            task = self._retire(inst)
            if wait:
                await asyncio.gather(task, return_exceptions=True)
        return inst

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for inst in self.all_instances():
            await inst.kill()
            inst.state = "stopped"
        await asyncio.gather(*self._tasks, return_exceptions=True)
