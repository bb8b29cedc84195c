"""A gRPC instance over cleartext HTTP/2 (grpcio's asyncio server), for services whose schema is "grpc".

    service modelarts.emulator.v1.Inference {
      rpc Predict(google.protobuf.Struct) returns (google.protobuf.Struct);           // unary
      rpc Generate(google.protobuf.Struct) returns (stream google.protobuf.Struct);   // server streaming
    }
    grpc.health.v1.Health/Check  (SERVING, or NOT_SERVING while the instance is marked unhealthy)

Messages are `google.protobuf.Struct`, a well-known type that ships compiled with protobuf: real
protobuf on the wire, any client can build and read it, and nothing is generated or committed.
Envoy never looks inside the messages, so a richer schema would test nothing more.

Faults: the instance latency delays the call; an injected error is UNAVAILABLE before any message
(trailers-only, so a proxy may retry it); `reset_after` ends a Generate with UNAVAILABLE after that
many tokens (headers and messages already sent, so no proxy may retry it). `kill` stops the server
at once: in-flight calls are cancelled and the port refuses connections. `drain` stops taking new
calls (GOAWAY) and lets in-flight ones finish.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import json_format, struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelarts_emulator.streaming import plan, tokens, tracked

if TYPE_CHECKING:
    from modelarts_emulator.instances import Instance

SERVICE = "modelarts.emulator.v1.Inference"
PREDICT = f"/{SERVICE}/Predict"
GENERATE = f"/{SERVICE}/Generate"
DELAY_METADATA = "x-emulator-delay-ms"
_STREAM_FIELDS = ("tokens", "first_token_ms", "interval_ms", "reset_after")


def to_struct(data: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(data)
    return message


def from_struct(message: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(message)  # type: ignore[no-any-return]


class _Health(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """grpc.health.v1 Check answering from the instance's health flag (the emulator's `unhealthy` knob)."""

    def __init__(self, instance: Instance) -> None:
        self._instance = instance

    async def Check(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        self._instance.health_checks += 1
        if request.service not in ("", SERVICE):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        status = health_pb2.HealthCheckResponse.SERVING if self._instance.healthy else \
            health_pb2.HealthCheckResponse.NOT_SERVING
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Watch is not served by the emulator")


class GrpcListener:
    def __init__(self, instance: Instance, host: str, port: int) -> None:
        self._instance = instance
        self._host = host
        self._port = port
        self._server: grpc.aio.Server | None = None
        self._peers: Counter[str] = Counter()  # peer -> calls in flight

    async def start(self) -> int:
        # so_reuseport off: grpc turns it on by default, which would let two instances share a port.
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        handlers = {
            "Predict": grpc.unary_unary_rpc_method_handler(
                self._predict, request_deserializer=struct_pb2.Struct.FromString,
                response_serializer=struct_pb2.Struct.SerializeToString),
            "Generate": grpc.unary_stream_rpc_method_handler(
                self._generate, request_deserializer=struct_pb2.Struct.FromString,
                response_serializer=struct_pb2.Struct.SerializeToString),
        }
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
        health_pb2_grpc.add_HealthServicer_to_server(_Health(self._instance), server)
        host = f"[{self._host}]" if ipaddress.ip_address(self._host).version == 6 else self._host
        try:
            port = server.add_insecure_port(f"{host}:{self._port}")
        except RuntimeError as exc:  # grpc raises instead of returning 0 when the bind fails
            raise OSError(98, f"address in use ({exc})") from None
        if port == 0:
            raise OSError(98, "address in use")
        await server.start()
        self._server, self._port = server, int(port)
        return self._port

    async def kill(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop(None)  # no grace: in-flight calls are cancelled now

    async def drain(self, timeout: float) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop(timeout)

    def connections(self) -> int:
        """Distinct client connections (peers) with a call in flight; grpc does not expose idle ones."""
        return len(+self._peers)

    # --- calls ---------------------------------------------------------------------------

    def _extra_delay(self, context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
        for key, value in context.invocation_metadata() or ():
            if key == DELAY_METADATA:
                return str(value)
        return None

    def _identity(self, method: str) -> dict[str, Any]:
        inst = self._instance
        return {"instance_id": inst.instance_id, "service_id": inst.service.service_id,
                "service_name": inst.service.config.name, "address": inst.address, "method": method}

    async def _predict(self, request: struct_pb2.Struct, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        inst = self._instance
        peer = context.peer()
        self._peers[peer] += 1
        try:
            async with inst.slot():
                if await inst.begin(self._extra_delay(context)):
                    await context.abort(grpc.StatusCode.UNAVAILABLE, f"injected error on {inst.instance_id}")
                # Headers go out with the answer (grpc's default): a call aborted before it is a
                # trailers-only UNAVAILABLE/CANCELLED, which a proxy may retry.
                return to_struct({**self._identity("Predict"), "request_fields": len(request.fields)})
        finally:
            self._peers[peer] -= 1

    async def _generate(self, request: struct_pb2.Struct,
                        context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[struct_pb2.Struct]:
        inst = self._instance
        fields = from_struct(request)
        try:
            config = plan(inst.stream, {k: fields[k] for k in _STREAM_FIELDS if k in fields})
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad stream parameters: {exc}")
        peer = context.peer()
        self._peers[peer] += 1
        try:
            async with inst.slot():
                if await inst.begin(self._extra_delay(context)):
                    await context.abort(grpc.StatusCode.UNAVAILABLE, f"injected error on {inst.instance_id}")
                with tracked(inst.streams) as outcome:
                    # Headers go out now, before the first token, as a model server's would.
                    await context.send_initial_metadata((("x-instance-id", inst.instance_id),))
                    async for event in tokens(config, inst.instance_id, inst.streams, outcome):
                        yield to_struct(event)
                    if outcome.reset:
                        await context.abort(grpc.StatusCode.UNAVAILABLE,
                                            f"stream reset after {config.reset_after} tokens by {inst.instance_id}")
        finally:
            self._peers[peer] -= 1

