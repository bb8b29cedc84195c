"""SIGKILL the writer in the middle of Envoy file writes, 200 times: Envoy never loads a partial file."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

from agent.config import AgentConfig, parse_config
from agent.envoy.serialize import parse_discovery_response
from agent.model import Endpoint
from agent.sinks.envoy.files import EnvoyFileSink
from tests.envoy.conftest import StartEnvoy
from tests.envoy.harness import free_port, make_snapshot, send_requests, wait_until

ITERATIONS = 200


def config_for(out_dir: Path, admin_port: int, services: list[str], ports: dict[str, int]) -> AgentConfig:
    return parse_config({
        "modelarts": {"iam_url": "http://127.0.0.1:1", "modelarts_url": "http://127.0.0.1:1", "project_id": "p"},
        "auth": {"mode": "token"},
        "services": [{"name": name, "service_id": name, "listen_port": ports[name]} for name in services],
        "envoy": {"output_dir": str(out_dir), "admin_port": admin_port},
    })


def writer_loop(configs: list[AgentConfig], endpoints: dict[str, list[Endpoint]]) -> None:
    """Child process: publish alternating snapshots as fast as possible until killed."""
    sink = EnvoyFileSink(configs[0])
    version = 1
    while True:
        config = configs[version % len(configs)]
        sink.update_config(config)
        count = 1 + version % len(endpoints["a"])
        chosen = {name: endpoints[name][:count] for name in ("a", "b")}
        sink.publish(make_snapshot(config, chosen, version=version))
        version += 1


def test_sigkill_during_writes_never_feeds_envoy_a_partial_file(tmp_path: Path, start_envoy: StartEnvoy,
                                                                instances) -> None:  # type: ignore[no-untyped-def]
    out_dir = tmp_path / "envoy"
    admin_port = free_port()
    ports = {"a": free_port(), "b": free_port()}
    upstream = instances.http("up-1")
    # Many endpoints make each file big enough that a kill often lands mid-write.
    endpoints = {name: [Endpoint(upstream.ip, upstream.port)] +
                 [Endpoint(f"10.{i // 250}.{i % 250}.{ord(name)}", 8000 + i) for i in range(400)]
                 for name in ("a", "b")}
    configs = [config_for(out_dir, admin_port, ["a"], ports), config_for(out_dir, admin_port, ["a", "b"], ports)]
    EnvoyFileSink(configs[1]).publish(make_snapshot(configs[1], {"a": endpoints["a"][:1], "b": endpoints["b"][:1]}))
    envoy = start_envoy(configs[1])
    rng = random.Random(7)
    killed_mid_write = 0
    for _ in range(ITERATIONS):
        pid = os.fork()
        if pid == 0:  # the child never returns into pytest
            try:
                writer_loop(configs, endpoints)
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0.002, 0.04))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        killed_mid_write += any(p.name.endswith(".tmp") for p in out_dir.rglob("*"))
    time.sleep(1.0)  # let Envoy process the last renames
    rejected = envoy.rejected_updates()
    assert all(value == 0 for value in rejected.values()), rejected
    assert killed_mid_write > 0, "no kill ever landed in the middle of a write; the test proved nothing"
    # Every file on disk is complete and parseable.
    for path in [out_dir / "cds.json", out_dir / "lds.json", *(out_dir / "eds").glob("*.json")]:
        parse_discovery_response(path.read_text())
    # A restarted writer converges and traffic flows.
    final = configs[0]
    EnvoyFileSink(final).publish(make_snapshot(final, {"a": endpoints["a"][:1]}, version=10_000))
    assert not any(p.name.endswith(".tmp") for p in out_dir.rglob("*"))
    assert wait_until(lambda: send_requests(ports["a"], 10, 2).answered.get("up-1") == 10, 10)
    assert all(value == 0 for value in envoy.rejected_updates().values())
    print(f"{ITERATIONS} kills, {killed_mid_write} left a temp file behind (killed mid-write)")
