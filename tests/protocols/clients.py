"""Real clients for the protocol tests: grpcio (unary, server streaming, health), SSE over a raw HTTP/1.1
socket (so the arrival time of every byte is seen, nothing buffered by a library), and aiohttp WebSocket.

Every read has a timeout and every loop a bound.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from modelarts_emulator.grpc_instance import GENERATE, PREDICT, from_struct, to_struct

# No proxy from the environment, ever: every address here is loopback.
CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0)]


class GrpcClient:
    """One channel (one HTTP/2 connection, as a real client keeps) with the emulator's two methods."""

    def __init__(self, address: str, authority: str | None = None) -> None:
        self.address = address
        options = [*CHANNEL_OPTIONS, *([("grpc.default_authority", authority)] if authority else [])]
        self.channel = grpc.insecure_channel(address, options=options)
        self._predict = self.channel.unary_unary(PREDICT, request_serializer=struct_pb2.Struct.SerializeToString,
                                                 response_deserializer=struct_pb2.Struct.FromString)
        self._generate = self.channel.unary_stream(GENERATE, request_serializer=struct_pb2.Struct.SerializeToString,
                                                   response_deserializer=struct_pb2.Struct.FromString)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    def __enter__(self) -> GrpcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def predict(self, timeout: float = 10.0, metadata: tuple[tuple[str, str], ...] = (),
                **fields: Any) -> dict[str, Any]:
        return from_struct(self._predict(to_struct(fields), timeout=timeout, metadata=metadata))

    def generate(self, timeout: float = 30.0, metadata: tuple[tuple[str, str], ...] = (), **fields: Any) -> Any:
        """The call object: iterate it for tokens (Struct), `.cancel()` it, read `.code()` at the end."""
        return self._generate(to_struct(fields), timeout=timeout, metadata=metadata)

    def health(self, service: str = "", timeout: float = 5.0) -> int:
        return int(self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout).status)


@dataclass
class StreamResult:
    """What one streamed call delivered, with arrival times relative to the request (seconds)."""

    instance: str | None = None
    tokens: list[dict[str, Any]] = field(default_factory=list)
    token_times: list[float] = field(default_factory=list)
    status: str = "OK"  # grpc code name, or for SSE: "OK", "truncated", "HTTP <n>"
    details: str = ""
    elapsed: float = 0.0

    @property
    def first_token(self) -> float:
        return self.token_times[0]


def grpc_stream(client: GrpcClient, timeout: float = 30.0, **fields: Any) -> StreamResult:
    """Run one Generate to its end, never raising for a gRPC error (the status is in the result)."""
    result = StreamResult()
    start = time.monotonic()
    call = client.generate(timeout=timeout, **fields)
    try:
        for message in call:
            result.token_times.append(time.monotonic() - start)
            token = from_struct(message)
            result.tokens.append(token)
            result.instance = token.get("instance_id", result.instance)
    except grpc.RpcError:
        pass
    result.status = call.code().name
    result.details = call.details() or ""
    result.elapsed = time.monotonic() - start
    return result


# --- SSE -------------------------------------------------------------------------------------------


def _read_line(sock: socket.socket, buffer: bytearray, deadline: float) -> bytes | None:
    """One CRLF/LF-terminated line from a raw socket; None when the peer closed or reset first."""
    while b"\n" not in buffer:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return None
        if not chunk:
            return None
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line.rstrip(b"\r")


def sse_events(host: str, port: int, path: str = "/stream", headers: dict[str, str] | None = None,
               timeout: float = 30.0) -> Iterator[tuple[float, bytes]]:
    """(seconds since the request, data line) per SSE event; ends with (t, b"<truncated>") on a cut stream.

    HTTP/1.1 chunked framing is parsed by hand: a chunk is yielded the moment it arrives.
    """
    start = time.monotonic()
    deadline = start + timeout
    extra = dict(headers or {})
    request = f"GET {path} HTTP/1.1\r\nHost: {extra.pop('Host', host)}\r\nAccept: text/event-stream\r\n"
    request += "".join(f"{k}: {v}\r\n" for k, v in extra.items()) + "\r\n"
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(request.encode())
        buffer = bytearray()
        status_line = _read_line(sock, buffer, deadline)
        if status_line is None:
            yield time.monotonic() - start, b"<truncated>"
            return
        status = int(status_line.split()[1])
        response_headers: dict[str, str] = {}
        while (line := _read_line(sock, buffer, deadline)) not in (None, b""):
            assert line is not None
            name, _, value = line.decode().partition(":")
            response_headers[name.strip().lower()] = value.strip()
        if status != 200:
            yield time.monotonic() - start, f"<HTTP {status}>".encode()
            return
        yield time.monotonic() - start, f"<instance {response_headers.get('x-instance-id')}>".encode()
        for _ in range(1_000_000):
            size_line = _read_line(sock, buffer, deadline)
            if size_line is None:
                yield time.monotonic() - start, b"<truncated>"
                return
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                return
            while len(buffer) < size + 2:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                if not chunk:
                    yield time.monotonic() - start, b"<truncated>"
                    return
                buffer += chunk
            data, buffer[:] = bytes(buffer[:size]), buffer[size + 2:]
            for event in data.split(b"\n\n"):
                if event.startswith(b"data: "):
                    yield time.monotonic() - start, event[len(b"data: "):]


def sse_stream(host: str, port: int, path: str = "/stream", headers: dict[str, str] | None = None,
               timeout: float = 30.0) -> StreamResult:
    import json

    result = StreamResult()
    for at, data in sse_events(host, port, path, headers, timeout):
        if data.startswith(b"<instance "):
            result.instance = data[len(b"<instance "):-1].decode()
        elif data == b"<truncated>":
            result.status = "truncated"
        elif data.startswith(b"<HTTP "):
            result.status = data[1:-1].decode()
        elif data != b"[DONE]":
            result.tokens.append(json.loads(data))
            result.token_times.append(at)
        result.elapsed = at
    return result
