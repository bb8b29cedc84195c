"""The JSON access log is off by default (its cost: docs/benchmarks.md, scenario 1); `enabled` or a `path`
turns it on. The metrics that carry the same information in aggregate stay on either way."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from agent.envoy.access_log import FILE_LOGGER, STATS_LOGGER
from tests.envoy.test_builders import hcm, render


def _file_logs(service: dict[str, Any]) -> list[dict[str, Any]]:
    logs = hcm(render([{"name": "llm", "listen_port": 8000, **service}]), "llm")["access_log"]
    assert any(log["name"] == STATS_LOGGER for log in logs), "the stats access logger must stay on"
    return [log for log in logs if log["name"] == FILE_LOGGER]


def test_no_access_log_by_default() -> None:
    assert _file_logs({}) == []


@pytest.mark.parametrize(("access_log", "path"), [
    ({"enabled": True}, "/dev/stdout"),
    ({"path": "/var/log/envoy/llm.log"}, "/var/log/envoy/llm.log"),
    ({"enabled": True, "path": "/tmp/a.log"}, "/tmp/a.log"),
], ids=["enabled", "a-path-turns-it-on", "both"])
def test_enabled_or_a_path_turns_it_on(access_log: dict[str, Any], path: str) -> None:
    [log] = _file_logs({"access_log": access_log})
    assert log["typed_config"]["path"] == path


def test_enabled_false_wins_over_a_path() -> None:
    assert _file_logs({"access_log": {"enabled": False, "path": "/tmp/a.log"}}) == []


def test_tcp_listeners_follow_the_same_default() -> None:
    def tcp_logs(service: dict[str, Any]) -> int:
        resources = render([{"name": "db", "listen_port": 5432, "protocol": "tcp", **service}])
        proxy = tcp_proxy_pb2.TcpProxy()
        assert resources.listeners[0].filter_chains[0].filters[0].typed_config.Unpack(proxy)
        return len(proxy.access_log)

    assert tcp_logs({}) == 0
    assert tcp_logs({"access_log": {"enabled": True}}) == 1
