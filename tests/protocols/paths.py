"""One data path in front of emulator instances: the file-mode sidecar, an ADS sidecar, or an ADS gateway.

Tests describe services as agent config dicts, start the path, and publish the emulator's listed
instances as snapshots; `target(service)` says where a client connects and which authority (Host) to send.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelarts_emulator import Emulator

from agent.config import AgentConfig
from agent.model import Endpoint
from agent.sinks.envoy.files import EnvoyFileSink
from agent.sinks.xds.sink import XdsSink
from tests.envoy.harness import EnvoyProcess, free_port, make_config, make_snapshot
from tests.xds.conftest import ads_address
from tests.xds.helpers import xds_config

ADS_LISTEN = "127.0.1.7"  # the ADS Envoy's listeners (node metadata), apart from the instances' addresses
MODES = ("file", "ads", "gateway")


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    authority: str  # Host / :authority to send (the gateway routes on it)
    path_prefix: str = ""  # gateway path routing ("/<service>"); empty elsewhere

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def endpoints_of(emu: Emulator, service_id: str) -> list[Endpoint]:
    return [Endpoint(ip=i.ip, port=i.port, schema=i.schema_)  # type: ignore[arg-type]
            for i in emu.admin.instances(service_id) if i.listed]


class DataPath:
    def __init__(self, mode: str, tmp: Path, start_envoy: Any, start_control_plane: Any,
                 start_ads_envoy: Any) -> None:
        assert mode in MODES, mode
        self.mode = mode
        self._tmp = tmp
        self._start_envoy = start_envoy
        self._start_control_plane = start_control_plane
        self._start_ads_envoy = start_ads_envoy
        self._ports: dict[str, int] = {}
        self._gateway_port = free_port()
        self._version = 0
        self.config: AgentConfig | None = None
        self.envoy: EnvoyProcess | None = None
        self._file_sink: EnvoyFileSink | None = None
        self._xds: XdsSink | None = None

    def start(self, services: Sequence[Mapping[str, Any]], endpoints: Mapping[str, Iterable[Endpoint]]) -> DataPath:
        specs = []
        for service in services:
            self._ports[service["name"]] = free_port()
            specs.append({"listen_port": self._ports[service["name"]], **service})
        if self.mode == "file":
            self.config = make_config(self._tmp / "envoy", free_port(), specs)
            self._file_sink = EnvoyFileSink(self.config)
            self.publish(endpoints)
            self.envoy = self._start_envoy(self.config)
        else:
            self.config = xds_config(self._tmp, specs, gateway={"listen_port": self._gateway_port})
            self._xds = self._start_control_plane(self.config)
            self.publish(endpoints)
            role = "gateway" if self.mode == "gateway" else "sidecar"
            self.envoy = self._start_ads_envoy(ads_address(self.config), listen_address=ADS_LISTEN, role=role)
        self.wait(endpoints)
        return self

    def publish(self, endpoints: Mapping[str, Iterable[Endpoint]]) -> None:
        assert self.config is not None
        self._version += 1
        snapshot = make_snapshot(self.config, {k: list(v) for k, v in endpoints.items()}, version=self._version)
        if self._file_sink is not None:
            self._file_sink.publish(snapshot)
        else:
            assert self._xds is not None
            self._xds.publish(snapshot)

    def wait(self, endpoints: Mapping[str, Iterable[Endpoint]], timeout: float = 10.0) -> None:
        assert self.envoy is not None
        self.envoy.wait_for_hosts({name: [e.address for e in eps] for name, eps in endpoints.items()}, timeout)
        if self.mode == "gateway":
            self.envoy.wait_for_listeners(["modelarts-gateway"], timeout)
        else:
            self.envoy.wait_for_listeners(list(self._ports), timeout)

    def target(self, service: str, by_path: bool = False) -> Target:
        if self.mode == "file":
            return Target("127.0.0.1", self._ports[service], service)
        if self.mode == "ads":
            return Target(ADS_LISTEN, self._ports[service], service)
        if by_path:
            return Target(ADS_LISTEN, self._gateway_port, "modelarts-gateway", f"/{service}")
        return Target(ADS_LISTEN, self._gateway_port, service)
