"""The sidecar's config is a `DataPlaneConfig`: no `modelarts`/`auth` section and no `service_id`, nothing to
fill in, and the Envoy files it renders are the ones the full agent config of the same services renders."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.cli import main
from agent.cli.sidecar_cmd import load_sidecar_config
from agent.config import DataPlaneConfig, parse_config
from agent.errors import ConfigError
from agent.inject.model import InjectOptions
from agent.inject.sidecar_config import sidecar_config
from agent.model import Endpoint
from agent.sinks.envoy.files import EnvoyFileSink
from agent.snapshot import SnapshotStore

SERVICES: list[dict[str, Any]] = [
    {"name": "chat", "listen_port": 10080, "lb": {"policy": "round_robin"}, "timeouts": {"idle_seconds": 900}},
    {"name": "embed", "listen_port": 10081, "protocol": "grpc"},
]
ENDPOINTS = {"chat": (Endpoint("192.168.205.1", 8080, "http"), Endpoint("192.168.205.2", 8080, "http")),
             "embed": (Endpoint("192.168.205.3", 9000, "grpc"),)}
# What `sidecar` (and `inject`) used to add so the config validated as an AgentConfig.
PLACEHOLDERS = {"modelarts": {"iam_url": "http://unused.invalid", "modelarts_url": "http://unused.invalid",
                              "project_id": "unused"},
                "auth": {"mode": "token"}}


def sidecar_yaml(output_dir: Path) -> dict[str, Any]:
    return {"services": [dict(s) for s in SERVICES], "splits": [
                {"name": "canary", "listen_port": 10090,
                 "backends": [{"service": "chat", "weight": 90}, {"service": "embed", "weight": 10}]}],
            "discovery": {"allowed_cidrs": ["192.168.205.0/24"]},
            "envoy": {"output_dir": str(output_dir), "admin_port": 19901}}


def with_placeholders(data: dict[str, Any]) -> dict[str, Any]:
    return {**PLACEHOLDERS, **data, "services": [{**s, "service_id": s["name"]} for s in data["services"]]}


def rendered(config: DataPlaneConfig) -> dict[str, bytes]:
    """The Envoy files the sidecar writes for ENDPOINTS, through its store and its file sink."""
    store = SnapshotStore(config.services, config.discovery)
    for name, endpoints in ENDPOINTS.items():
        store.record_endpoints(name, endpoints)
    EnvoyFileSink(config).publish(store.snapshot)
    out = config.envoy.output_dir
    files = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    shutil.rmtree(out)
    return files


def test_a_sidecar_config_without_a_modelarts_side_renders_the_envoy_files_of_before(tmp_path: Path) -> None:
    data = sidecar_yaml(tmp_path / "envoy")
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(data))
    config = load_sidecar_config(path, [])
    assert type(config) is DataPlaneConfig
    assert [(s.name, s.discovery_id) for s in config.services] == [("chat", "chat"), ("embed", "embed")]
    # Before: the same services as an AgentConfig with placeholder modelarts/auth and service_id = name.
    before = parse_config(with_placeholders(data), "the old sidecar shape")
    files = rendered(config)
    assert {"cds.json", "lds.json", "eds/chat.json", "eds/embed.json"} <= set(files)
    assert files == rendered(before)
    # The snapshot's service ids are the Service names, as before (/status shows them).
    assert (SnapshotStore(config.services, config.discovery).snapshot
            == SnapshotStore(before.services, before.discovery).snapshot)


def test_the_placeholders_of_earlier_injections_are_ignored_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = sidecar_yaml(tmp_path / "envoy")
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(with_placeholders(data)))
    with caplog.at_level(logging.WARNING, logger="agent.cli.sidecar_cmd"):
        config = load_sidecar_config(path, [])
    assert type(config) is DataPlaneConfig
    warning = next(r.getMessage() for r in caplog.records if "never calls ModelArts" in r.getMessage())
    assert "modelarts, auth, services.0.service_id, services.1.service_id" in warning
    (tmp_path / "clean.yaml").write_text(yaml.safe_dump(data))
    assert config == load_sidecar_config(tmp_path / "clean.yaml", [])


@pytest.mark.parametrize(("change", "field"), [
    ({"modelart": {}}, "modelart"),  # a typo of a section is no ModelArts section
    ({"services": [{**SERVICES[0], "listen_prot": 1}]}, "services.0.listen_prot"),
])
def test_other_unknown_keys_are_still_refused(tmp_path: Path, change: dict[str, Any], field: str) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({**sidecar_yaml(tmp_path / "envoy"), **change}))
    with pytest.raises(ConfigError, match=f"{field}: Extra inputs are not permitted"):
        load_sidecar_config(path, [])


def test_render_bootstrap_reads_a_sidecar_config(tmp_path: Path) -> None:
    """An injected pod's init container renders Envoy's bootstrap from the sidecar's config."""
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(sidecar_yaml(tmp_path / "envoy")))
    out = tmp_path / "bootstrap.yaml"
    assert main.main(["render", "bootstrap", "--config", str(path), "--output", str(out)]) == 0
    assert yaml.safe_load(out.read_text())["admin"]["address"]["socket_address"]["port_value"] == 19901


def test_inject_writes_no_modelarts_side_and_drops_an_earlier_injections_placeholders() -> None:
    earlier = yaml.safe_dump({**PLACEHOLDERS, "services": [{"name": "llm", "service_id": "llm", "listen_port": 1}]})
    data = yaml.safe_load(sidecar_config(InjectOptions(services=(("llm", 10080), ("embed", 10081))), earlier))
    assert not {"modelarts", "auth", "budget"} & set(data)
    assert data["services"] == [{"name": "llm", "listen_port": 10080}, {"name": "embed", "listen_port": 10081}]


def test_a_broken_sidecar_config_is_reported_as_runs_is(tmp_path: Path) -> None:
    """The sidecar reads its file with the config module's reader: bad YAML names the line, as `run`'s does."""
    path = tmp_path / "sidecar.yaml"
    path.write_text("services:\n  - name: llm\n    listen_port: [8080\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"invalid YAML in .*sidecar\.yaml at line \d+, column \d+"):
        load_sidecar_config(path, [])
    path.write_text("- just\n- a list\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="the top level must be a mapping"):
        load_sidecar_config(path, [])
