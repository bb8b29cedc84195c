"""WebSocket through real Envoy (file sidecar, ADS sidecar, ADS gateway) with aiohttp's client: the upgrade
works, messages and token streams flow both ways, and an open connection outlives an endpoint update
that keeps its instance (while a new connection never goes to a removed instance)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from modelarts_emulator import ServiceConfig
from modelarts_emulator.config import StreamConfig

from tests.protocols.paths import DataPath, endpoints_of

pytestmark = pytest.mark.envoy

WS_TIMEOUT = aiohttp.ClientWSTimeout(ws_close=10)
CHAT = ServiceConfig(name="chat", instances=3, stream=StreamConfig(tokens=3, interval_ms=5))


@pytest.mark.parametrize("data_path", ["file", "ads", "gateway"], indirect=True)
def test_websocket_upgrade_and_a_long_lived_connection_survives_an_endpoint_update(emulator,
                                                                                   data_path: DataPath) -> None:
    emu = emulator(CHAT)
    eps = endpoints_of(emu, CHAT.service_id)
    by_id = {i.instance_id: i for i in emu.admin.instances(CHAT.service_id)}
    data_path.start([{"name": "chat"}], {"chat": eps[:2]})
    target = data_path.target("chat")
    url = f"http://{target.address}/ws"

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session, session.ws_connect(
                url, headers={"Host": target.authority}, timeout=WS_TIMEOUT) as ws:
            hello = await ws.receive_json(timeout=5)
            mine = by_id[hello["instance_id"]]
            await ws.send_str("before")
            assert (await ws.receive_json(timeout=5))["data"] == "before"
            # The update keeps this connection's instance, drops the other one, adds a third.
            other = next(e for e in eps[:2] if e.address != mine.address)
            kept = [e for e in eps if e.address != other.address]
            data_path.publish({"chat": kept})
            await asyncio.to_thread(data_path.wait, {"chat": kept})
            for n in range(3):
                await ws.send_str(f"after-{n}")
                echo = await ws.receive_json(timeout=5)
                assert echo == {"event": "echo", "data": f"after-{n}", "instance_id": mine.instance_id}
            await ws.send_json({"generate": {"tokens": 3}})
            events = [await ws.receive_json(timeout=5) for _ in range(4)]
            assert [e["event"] for e in events] == ["token", "token", "token", "done"]
            await ws.send_bytes(b"\x00binary")
            assert await ws.receive_bytes(timeout=5) == b"\x00binary"
            # New connections only reach the instances that are still listed.
            seen = set()
            for _ in range(8):
                async with session.ws_connect(url, headers={"Host": target.authority}, timeout=WS_TIMEOUT) as fresh:
                    seen.add((await fresh.receive_json(timeout=5))["instance_id"])
            removed = next(i for i in by_id.values() if i.address == other.address)
            assert removed.instance_id not in seen and seen, seen

    asyncio.run(scenario())
    upgrades = data_path.envoy.stats("downstream_cx_upgrades_total")
    assert sum(upgrades.values()) >= 9, upgrades
