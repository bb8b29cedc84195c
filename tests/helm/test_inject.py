"""`modelarts-agent inject`: what it adds, idempotency, pass-through, errors, and the committed example."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.cli.main import build_parser, main
from agent.cli.sidecar_cmd import load_sidecar_config
from agent.inject.containers import restricted_security_context
from agent.inject.injector import inject_text
from agent.inject.model import ANNOTATION_CONFIG, InjectError, InjectOptions
from tests.envoy.harness import require_envoy
from tests.helm.conftest import APP, REPO

EXAMPLE = REPO / "manifests" / "examples" / "app-with-sidecar.yaml"
LLM = InjectOptions(services=(("llm", 10080),))

POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: batch
spec:
  restartPolicy: Never
  containers:
    - name: job
      image: job:1
"""
STATEFULSET = """\
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: data}
spec:
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      serviceAccountName: db-reader
      automountServiceAccountToken: false
      initContainers:
        - {name: migrate, image: db:1}
      containers:
        - {name: db, image: db:1}
      volumes:
        - {name: data, emptyDir: {}}
"""
OTHERS = """\
# a comment that must survive
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}   # flow style, kept as written
data:
  key: "value"
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec: {ports: [{port: 80}]}
"""


def inject(text: str, options: InjectOptions = LLM) -> str:
    return inject_text(text, options).text


def documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"] if doc["kind"] == "Pod" else doc["spec"]["template"]["spec"]


def pod_meta(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["metadata"] if doc["kind"] == "Pod" else doc["spec"]["template"]["metadata"]


# --- the committed example ------------------------------------------------------------------------


def test_example_is_in_sync_with_inject(tmp_path: Path) -> None:
    out = tmp_path / "out.yaml"
    assert main(["inject", "-f", str(APP), "--service", "llm=10080", "-o", str(out)]) == 0
    assert out.read_text() == EXAMPLE.read_text(), (
        "manifests/examples/app-with-sidecar.yaml is stale: run modelarts-agent inject -f tests/helm/app.yaml "
        "--service llm=10080 -o manifests/examples/app-with-sidecar.yaml")


# --- idempotency and pass-through -------------------------------------------------------------------


@pytest.mark.parametrize("source", [APP.read_text(), POD, STATEFULSET, POD + "---\n" + OTHERS],
                         ids=["deployment", "pod", "statefulset", "mixed"])
@pytest.mark.parametrize("native", [True, False], ids=["native", "classic"])
def test_injecting_twice_equals_injecting_once(source: str, native: bool) -> None:
    options = InjectOptions(services=(("llm", 10080),), native_sidecars=native)
    once = inject(source, options)
    assert once != source
    assert inject(once, options) == once
    # Re-injecting without --service keeps the previous injection's config.
    assert inject(once, InjectOptions(native_sidecars=native)) == once


def test_other_documents_pass_through_byte_for_byte() -> None:
    assert inject(OTHERS) == OTHERS
    mixed = OTHERS + "---\n" + POD
    out = inject(mixed)
    assert out.startswith(OTHERS + "---\n")
    assert documents(out)[2]["kind"] == "Pod" and len(documents(out)) == 3


def test_nothing_to_inject_is_a_warning_not_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "svc.yaml"
    source.write_text(OTHERS)
    assert main(["inject", "-f", str(source), "--service", "llm=10080"]) == 0
    captured = capsys.readouterr()
    assert captured.out == OTHERS
    assert "nothing was injected" in captured.err


def test_fields_left_empty_are_filled_in() -> None:
    source = POD.replace("  name: batch\n", "  name: batch\n  annotations:\n").replace(
        "  restartPolicy: Never\n", "  restartPolicy: Never\n  initContainers:\n  volumes:\n")
    once = inject(source)
    spec = pod_spec(documents(once)[0])
    assert [c["name"] for c in spec["initContainers"]][:1] == ["modelarts-bootstrap"] and spec["volumes"]
    assert inject(once) == once


def test_reinjecting_with_another_service_adds_it() -> None:
    once = inject(POD)
    twice = inject(once, InjectOptions(services=(("embeddings", 10081),)))
    config = yaml.safe_load(pod_meta(documents(twice)[0])["annotations"][ANNOTATION_CONFIG])
    assert [(s["name"], s["listen_port"]) for s in config["services"]] == [("llm", 10080), ("embeddings", 10081)]
    spec = pod_spec(documents(twice)[0])
    assert [c["name"] for c in spec["initContainers"]].count("modelarts-agent") == 1


# --- what gets added -----------------------------------------------------------------------------------


def test_native_sidecars_start_before_the_app_with_a_restricted_security_context() -> None:
    doc = documents(inject(STATEFULSET))[0]
    spec = pod_spec(doc)
    names = [c["name"] for c in spec["initContainers"]]
    assert names == ["modelarts-bootstrap", "modelarts-agent", "modelarts-envoy", "migrate"]
    assert [c.get("restartPolicy") for c in spec["initContainers"]] == [None, "Always", "Always", None]
    assert [c["name"] for c in spec["containers"]] == ["db"]
    for container in spec["initContainers"][:3]:
        assert container["securityContext"] == restricted_security_context()
        assert container["resources"]["limits"]["memory"]
    agent, envoy = spec["initContainers"][1:3]
    assert agent["args"] == ["sidecar", "--config", "/etc/modelarts-agent/sidecar.yaml"]
    assert envoy["command"] == ["/opt/modelarts-agent/bin/envoy"]
    assert envoy["startupProbe"]["httpGet"]["path"] == "/stats/prometheus"
    assert agent["readinessProbe"]["httpGet"]["path"] == "/readyz"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert set(volumes) == {"data", "modelarts-run", "modelarts-tmp", "modelarts-config", "modelarts-sa-token"}
    assert volumes["modelarts-run"]["emptyDir"]
    projected = volumes["modelarts-config"]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"]
    assert projected == f"metadata.annotations['{ANNOTATION_CONFIG}']"
    # The pod opted out of the API token: only the agent container gets one.
    token_users = [c["name"] for c in spec["initContainers"] + spec["containers"]
                   if any(m["name"] == "modelarts-sa-token" for m in c.get("volumeMounts", []))]
    assert token_users == ["modelarts-agent"]
    # A ServiceAccount of the app's own is kept (with a warning: it needs the sidecar Role).
    assert spec["serviceAccountName"] == "db-reader"
    assert any("db-reader" in w for w in inject_text(STATEFULSET, LLM).warnings)


def test_envoy_runs_a_fixed_number_of_workers_not_one_per_node_cpu(tmp_path: Path) -> None:
    # Without --concurrency Envoy starts a worker per CPU of the node: 64 on a 64-core node, in every pod.
    envoy = pod_spec(documents(inject(POD))[0])["initContainers"][2]
    assert envoy["args"][-2:] == ["--concurrency", "2"]
    out = tmp_path / "out.yaml"
    assert main(["inject", "-f", str(APP), "--service", "llm=10080", "--envoy-concurrency", "4", "-o", str(out)]) == 0
    deployment = next(d for d in documents(out.read_text()) if d["kind"] == "Deployment")
    envoy = next(c for c in pod_spec(deployment)["initContainers"] if c["name"] == "modelarts-envoy")
    assert envoy["args"][-2:] == ["--concurrency", "4"]


def test_classic_mode_appends_ordinary_containers() -> None:
    spec = pod_spec(documents(inject(POD, InjectOptions(services=(("llm", 10080),), native_sidecars=False)))[0])
    assert [c["name"] for c in spec["initContainers"]] == ["modelarts-bootstrap"]
    assert [c["name"] for c in spec["containers"]] == ["job", "modelarts-agent", "modelarts-envoy"]
    assert all("restartPolicy" not in c for c in spec["containers"])
    assert spec["serviceAccountName"] == "modelarts-sidecar"


def test_lists_are_injected_item_by_item() -> None:
    items = [yaml.safe_load(POD), yaml.safe_load(OTHERS.split("---\n")[1])]
    out = documents(inject(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items})))[0]
    assert out["items"][1] == items[1]
    assert out["items"][0]["spec"]["initContainers"][1]["name"] == "modelarts-agent"


def test_the_config_is_what_the_sidecar_and_render_bootstrap_accept(tmp_path: Path) -> None:
    base = {"services": [{"name": "llm", "lb": {"policy": "round_robin"}, "timeouts": {"idle_seconds": 900}}],
            "discovery": {"allowed_cidrs": ["192.168.0.0/16"]}}
    doc = documents(inject(POD, InjectOptions(services=(("llm", 10080),), base_config=base)))[0]
    config_file = tmp_path / "sidecar.yaml"
    config_file.write_text(pod_meta(doc)["annotations"][ANNOTATION_CONFIG])
    config = load_sidecar_config(config_file, [])
    (llm,) = config.services
    assert (llm.name, llm.listen_port, llm.lb.policy.value, llm.timeouts.idle_seconds) == \
        ("llm", 10080, "round_robin", 900)
    assert str(config.envoy.output_dir) == "/var/run/modelarts/envoy" and config.envoy.stats_port == 9902
    assert (config.admin.address, config.admin.port) == ("0.0.0.0", 8086)
    assert config.envoy.admin_address == "127.0.0.1"
    # Every injected container's argv parses with the real CLI.
    for container in pod_spec(doc)["initContainers"]:
        if "command" not in container:
            build_parser().parse_args(container["args"])


def test_the_init_container_writes_a_bootstrap_envoy_accepts(tmp_path: Path) -> None:
    """Run the init container's command on the injected config; Envoy validates the result."""
    envoy = require_envoy()
    doc = documents(inject(POD))[0]
    config_file = tmp_path / "sidecar.yaml"
    config_file.write_text(pod_meta(doc)["annotations"][ANNOTATION_CONFIG])
    bootstrap = next(c for c in pod_spec(doc)["initContainers"] if c["name"] == "modelarts-bootstrap")
    args = [str(config_file) if a == "/etc/modelarts-agent/sidecar.yaml" else a for a in bootstrap["args"]]
    args = [str(tmp_path / "bootstrap.yaml") if a == "/var/run/modelarts/bootstrap.yaml" else a for a in args]
    # The emptyDir paths exist only in the pod: point the output dir at tmp_path (env override).
    env = {**os.environ, "MODELARTS_AGENT__ENVOY__OUTPUT_DIR": str(tmp_path / "envoy")}
    subprocess.run([sys.executable, "-m", "agent", *args], check=True, env=env, timeout=60, capture_output=True)
    assert (tmp_path / "envoy" / "cds.json").exists()
    proc = subprocess.run([envoy, "--mode", "validate", "-c", str(tmp_path / "bootstrap.yaml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("source", "options", "message"), [
    ("apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: ds}\nspec: {}\n", LLM,
     "DaemonSet ds is not supported; inject handles Deployment, StatefulSet and Pod"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [\n", LLM, "invalid YAML in document 1"),
    ("- just\n- a list\n", LLM, "document 1 of input is not a Kubernetes object"),
    ("kind: Pod\nspec: {}\n", LLM, "apiVersion and kind are required"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {}\n", LLM, "Pod p has no containers"),
    ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {}\n", LLM,
     "Deployment d has no spec.template"),
    (POD, InjectOptions(), "no services to follow: give --service NAME=PORT"),
    (POD, InjectOptions(services=(("LLM", 10080),)), "services.0.name: must be a DNS-1123 label"),
    (POD, InjectOptions(services=(("llm", 8086),)), "service llm listens on 8086, which is the agent's admin port"),
    (POD.replace("image: job:1", "image: job:1\n      ports: [{containerPort: 9902}]"), LLM,
     "container job uses port 9902, which is Envoy's stats port"),
    (POD.replace("restartPolicy: Never", "hostNetwork: true"), LLM, "hostNetwork pods are not supported"),
], ids=["daemonset", "bad-yaml", "not-an-object", "no-api-version", "no-containers", "no-template", "no-services",
        "bad-service-name", "port-clash-ours", "port-clash-app", "host-network"])
def test_bad_input_is_a_clear_error(source: str, options: InjectOptions, message: str) -> None:
    with pytest.raises(InjectError) as info:
        inject_text(source, options)
    assert message in str(info.value)


@pytest.mark.parametrize(("args", "message"), [
    (["--service", "llm=10080"], "error: document 1 of {path}: DaemonSet ds is not supported"),
    (["--service", "llm"], "argument --service: 'llm': expected NAME=PORT"),
    (["--service", "llm=http"], "argument --service: 'http' is not a port"),
    (["--service", "llm=10080", "--envoy-concurrency", "0"],
     "argument --envoy-concurrency: '0' is not a number of worker threads (1-64)"),
], ids=["unsupported-kind", "service-without-port", "service-bad-port", "bad-concurrency"])
def test_cli_errors_are_one_line_without_a_traceback(tmp_path: Path, args: list[str], message: str) -> None:
    source = tmp_path / "ds.yaml"
    source.write_text("apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: ds}\nspec: {}\n")
    proc = subprocess.run([sys.executable, "-m", "agent", "inject", "-f", str(source), *args],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert message.format(path=source) in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_cli_reads_stdin_and_reports_a_missing_file(capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO(POD))
    assert main(["inject", "-f", "-", "--service", "llm=10080"]) == 0
    assert "modelarts-envoy" in capsys.readouterr().out
    assert main(["inject", "-f", "/nonexistent/deploy.yaml", "--service", "llm=10080"]) == 2
    assert "error: cannot read /nonexistent/deploy.yaml" in capsys.readouterr().err
