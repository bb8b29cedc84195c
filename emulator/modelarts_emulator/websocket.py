"""WebSocket at `/ws`: a hello, then an echo of every message, or a token stream on request.

    server -> {"event": "hello", "instance_id": ...}
    client -> any text            server -> {"event": "echo", "data": <text>, "instance_id": ...}
    client -> {"generate": {"tokens": n, "interval_ms": x, ...}}
                                  server -> {"event": "token", ...} per token, then {"event": "done"}
    client -> binary              server -> the same bytes

A generation holds a concurrency slot and counts as a stream; the connection itself does neither,
so an idle long-lived socket costs the instance nothing. A mid-stream reset aborts the connection.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from modelarts_emulator.streaming import plan, tokens, tracked

if TYPE_CHECKING:
    from modelarts_emulator.instances import Instance


async def serve_websocket(request: web.Request, instance: Instance, headers: Mapping[str, str]) -> web.StreamResponse:
    ws = web.WebSocketResponse(heartbeat=None)
    ws.headers.update(headers)
    await ws.prepare(request)
    instance.websockets += 1
    try:
        await ws.send_json({"event": "hello", "instance_id": instance.instance_id})
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
            elif msg.type == WSMsgType.TEXT:
                request_ = _generate_request(msg.data)
                if request_ is None:
                    await ws.send_json({"event": "echo", "data": msg.data, "instance_id": instance.instance_id})
                elif not await _generate(ws, request, instance, request_):
                    break
    finally:
        instance.websockets -= 1
    return ws


def _generate_request(text: str) -> dict[str, Any] | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if isinstance(data, dict) and isinstance(data.get("generate"), dict):
        return data["generate"]  # type: ignore[no-any-return]
    return None


async def _generate(ws: web.WebSocketResponse, request: web.Request, instance: Instance,
                    overrides: Mapping[str, Any]) -> bool:
    """Stream one generation; False once the connection is gone (reset)."""
    try:
        config = plan(instance.stream, overrides)
    except ValueError as exc:
        await ws.send_json({"event": "error", "error": f"bad stream parameters: {exc}"})
        return True
    async with instance.slot():
        if await instance.begin(None):
            await ws.send_json({"event": "error", "error": "injected error", "instance_id": instance.instance_id})
            return True
        with tracked(instance.streams) as outcome:
            async for event in tokens(config, instance.instance_id, instance.streams, outcome):
                await ws.send_json({"event": "token", **event})
            if outcome.reset:
                if request.transport is not None:  # no close frame: as if the instance crashed
                    request.transport.abort()
                return False
            await ws.send_json({"event": "done", "instance_id": instance.instance_id})
    return True
