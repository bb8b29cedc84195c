"""`render bootstrap --ads`, the `xds:` / `gateway:` config sections, and `sinks_for` with xDS enabled."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest
import yaml

from agent.cli import render_cmd
from agent.config import parse_config
from agent.errors import AgentError, ConfigError
from agent.sinks.factory import sinks_for
from agent.sinks.xds.sink import XdsSink
from tests.envoy.harness import envoy_binary
from tests.xds.helpers import xds_config
from tests.xds.pki import make_pki


def render(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    render_cmd.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["render", "bootstrap", *argv])
    result: int = args.handler(args)
    return result


def test_ads_bootstrap_with_mtls_node_metadata_and_delta(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pki = make_pki(tmp_path / "pki")
    assert render(["--ads", "127.0.0.1:18000", "--node-id", "pod-1", "--services", "llm, embed", "--delta",
                   "--ads-ca", str(pki.ca), "--ads-cert", str(pki.client_cert), "--ads-key", str(pki.client_key),
                   "--admin-port", "9911"]) == 0
    text = capsys.readouterr().out
    data = yaml.safe_load(text)
    dynamic = data["dynamic_resources"]
    assert dynamic["ads_config"]["api_type"] == "DELTA_GRPC"
    assert dynamic["ads_config"]["transport_api_version"] == "V3"
    assert dynamic["ads_config"]["grpc_services"][0]["envoy_grpc"]["cluster_name"] == "modelarts_xds"
    assert dynamic["cds_config"] == {"ads": {}, "resource_api_version": "V3"}
    assert dynamic["lds_config"] == {"ads": {}, "resource_api_version": "V3"}
    assert data["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9911}
    assert data["node"]["id"] == "pod-1"
    assert data["node"]["metadata"] == {"modelarts.services": "llm,embed"}
    [cluster] = data["static_resources"]["clusters"]
    assert cluster["type"] == "STATIC"
    assert "http2_protocol_options" in str(cluster["typed_extension_protocol_options"])
    tls = cluster["transport_socket"]["typed_config"]["common_tls_context"]
    assert tls["validation_context"]["trusted_ca"]["filename"] == str(pki.ca)
    assert tls["tls_certificates"][0]["certificate_chain"]["filename"] == str(pki.client_cert)
    assert tls["alpn_protocols"] == ["h2"]
    if envoy_binary() is not None:
        path = tmp_path / "bootstrap.yaml"
        path.write_text(text)
        result = subprocess.run([str(envoy_binary()), "--mode", "validate", "-c", str(path)], capture_output=True,
                                text=True, timeout=30)
        assert result.returncode == 0, result.stdout + result.stderr


def test_ads_bootstrap_defaults_to_sotw_plaintext_and_dns_names_use_strict_dns(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert render(["--ads", "modelarts-agent.ops.svc:18000", "--gateway"]) == 0
    data = yaml.safe_load(capsys.readouterr().out)
    assert data["dynamic_resources"]["ads_config"]["api_type"] == "GRPC"
    assert data["node"]["metadata"] == {"modelarts.role": "gateway"}
    [cluster] = data["static_resources"]["clusters"]
    assert cluster["type"] == "STRICT_DNS" and "transport_socket" not in cluster


def test_bootstrap_needs_config_or_ads_and_a_valid_address() -> None:
    with pytest.raises(AgentError, match="--config"):
        render([])
    with pytest.raises(ConfigError, match="HOST:PORT"):
        render(["--ads", "no-port"])


def test_xds_and_gateway_config_sections(tmp_path: Path) -> None:
    base = {"modelarts": {"iam_url": "http://x", "modelarts_url": "http://x", "project_id": "p"},
            "auth": {"mode": "token"}}
    config = parse_config(base)
    assert not config.xds.enabled and config.xds.address == "127.0.0.1" and config.gateway.listen_port == 8080
    with pytest.raises(ConfigError, match="cert_file and key_file"):
        parse_config({**base, "xds": {"tls": {"cert_file": "a.pem"}}})
    with pytest.raises(ConfigError, match=r"xds\.address"):
        parse_config({**base, "xds": {"address": "agent.local"}})
    with pytest.raises(ConfigError, match="route_by_host"):
        parse_config({**base, "gateway": {"route_by_host": False, "route_by_path": False}})


def test_sinks_for_adds_a_started_xds_sink_when_enabled(tmp_path: Path) -> None:
    config = xds_config(tmp_path, [{"name": "svc"}])
    sinks = sinks_for(config)
    try:
        assert [s.name for s in sinks] == ["envoy-files", "xds"]
        xds = sinks[1]
        assert isinstance(xds, XdsSink) and xds.server is not None and xds.server.port == config.xds.port
        # The port is taken: a second agent fails at start-up with a clear error.
        with pytest.raises(AgentError, match="cannot serve xDS"):
            XdsSink(config).start()
    finally:
        for sink in sinks:
            if isinstance(sink, XdsSink):
                sink.close(grace=0)
    disabled = config.model_copy(update={"xds": config.xds.model_copy(update={"enabled": False})})
    assert [s.name for s in sinks_for(disabled)] == ["envoy-files"]
