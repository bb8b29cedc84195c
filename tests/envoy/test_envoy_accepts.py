"""Every feature at once, loaded by the real Envoy: no file may be rejected, everything must show up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.sinks.envoy.files import EnvoyFileSink
from tests.envoy.conftest import Instances, Pki, StartEnvoy
from tests.envoy.harness import endpoint, free_port, make_config, make_snapshot, send_requests, tcp_exchange

pytestmark = pytest.mark.envoy


def test_envoy_accepts_every_feature(out_dir: Path, admin_port: int, instances: Instances, start_envoy: StartEnvoy,
                                     pki: Pki) -> None:
    ports = {name: free_port() for name in ("web", "chat", "grpc", "raw", "tls", "lax", "pending", "split", "tsplit")}
    services: list[dict[str, Any]] = [
        {"name": "web", "listen_port": ports["web"], "health_check": {"type": "http", "path": "/health",
                                                                      "interval_seconds": 0.5}},
        {"name": "chat", "listen_port": ports["chat"], "lb": {"policy": "ring_hash", "hash_key": {"cookie": "sess"}},
         "timeouts": {"request_seconds": 60, "idle_seconds": 0, "max_request_bytes": 65536},
         "retries": {"idempotent_only": False, "per_try_timeout_seconds": 5}},
        {"name": "grpc", "listen_port": ports["grpc"], "protocol": "grpc", "lb": {"policy": "random"},
         "health_check": {"type": "http"}},
        {"name": "raw", "listen_port": ports["raw"], "protocol": "tcp", "health_check": {"type": "tcp"},
         "lb": {"policy": "maglev", "hash_key": {"source_ip": True}}},
        {"name": "raw2", "protocol": "tcp", "lb": {"policy": "round_robin"}, "retries": {"enabled": False}},
        {"name": "tls", "listen_port": ports["tls"], "tls": {"ca_file": str(pki.ca_file), "sni": "instance.test"},
         "lb": {"policy": "least_request", "choice_count": 3}},
        {"name": "lax", "listen_port": ports["lax"], "protocol": "https", "tls": {"insecure_skip_verify": True},
         "outlier_detection": {"enabled": False},
         "circuit_breakers": {"max_connections": 10, "max_pending_requests": 10, "max_requests": 10}},
        {"name": "pending", "listen_port": ports["pending"]},
    ]
    splits = [
        {"name": "split", "listen_port": ports["split"], "backends": [{"service": "web", "weight": 9},
                                                                      {"service": "chat", "weight": 1}]},
        {"name": "tsplit", "listen_port": ports["tsplit"], "backends": [{"service": "raw", "weight": 1},
                                                                        {"service": "raw2", "weight": 1}]},
    ]
    config = make_config(out_dir, admin_port, services, splits)
    web, chat = instances.http("web0"), instances.http("chat0")
    tls_up = instances.http("tls0", tls=pki.server_context)
    raw, raw2 = instances.tcp("raw0"), instances.tcp("raw20")
    eps = {
        "web": [endpoint(web)], "chat": [endpoint(chat)], "grpc": [endpoint(instances.http("grpc0"), "grpc")],
        "raw": [endpoint(raw, "tcp")], "raw2": [endpoint(raw2, "tcp")],
        "tls": [endpoint(tls_up, "https")], "lax": [endpoint(tls_up, "https")],
    }
    EnvoyFileSink(config).publish(make_snapshot(config, eps, unsynced=["pending"]))
    envoy = start_envoy(config)
    envoy.wait_for_listeners(set(ports))
    envoy.wait_for_hosts({"pending": [], "web": [web.address], "raw2": [raw2.address]})
    assert set(envoy.rejected_updates().values()) == {0}
    assert set(envoy.hosts()) == {s["name"] for s in services}
    assert envoy.listeners() == set(ports)
    for name in ("web", "chat", "tls", "lax", "split"):
        result = send_requests(ports[name], 5, concurrency=1)
        assert result.failures == [], (name, result.failures)
    assert tcp_exchange(ports["raw"], b"ping") == b"raw0:ping"
    assert tcp_exchange(ports["tsplit"], b"ping").endswith(b":ping")
    status, _ = envoy.admin("/config_dump")
    assert status == 200
