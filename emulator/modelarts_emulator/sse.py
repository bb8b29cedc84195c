"""Server-sent events: `text/event-stream`, chunked, one `data:` event per token, then `data: [DONE]`.

Each event is written (and flushed) the moment its token is due, so a proxy that buffers shows up
as a late first token. A mid-stream reset aborts the TCP connection (RST) without the final chunk:
the client sees a truncated body, as when a model server crashes half-way through a generation.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Mapping
from typing import TYPE_CHECKING

from aiohttp import web

from modelarts_emulator.streaming import plan, tokens, tracked

if TYPE_CHECKING:
    from modelarts_emulator.instances import Instance

# Query parameters a client may use to shape one stream ("chunks" is the historical name of "tokens").
_QUERY = {"tokens": "tokens", "chunks": "tokens", "first_token_ms": "first_token_ms",
          "interval_ms": "interval_ms", "reset_after": "reset_after"}


def _overrides(query: Mapping[str, str]) -> dict[str, str]:
    return {field: query[name] for name, field in _QUERY.items() if name in query}


async def serve_sse(request: web.Request, instance: Instance, headers: Mapping[str, str]) -> web.StreamResponse:
    try:
        config = plan(instance.stream, _overrides(request.query))
    except ValueError as exc:
        return web.json_response({"error": f"bad stream parameters: {exc}"}, status=400)
    resp = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    resp.enable_chunked_encoding()
    with tracked(instance.streams) as outcome:
        await resp.prepare(request)
        async for event in tokens(config, instance.instance_id, instance.streams, outcome):
            await resp.write(f"data: {json.dumps(event)}\n\n".encode())
        if outcome.reset:
            _abort(request)
            return resp
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
    return resp


def _abort(request: web.Request) -> None:
    """RST rather than FIN, so the client cannot mistake the cut for the end of the body."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
