"""The Helm chart without a cluster: lint, render (defaults and every optional feature), and the
copies it must keep equal to manifests/ (CRD byte for byte, RBAC rule for rule)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.cli.main import build_parser
from agent.cli.sidecar_cmd import load_sidecar_config
from agent.config import AgentConfig
from agent.inject.containers import restricted_security_context
from agent.inject.model import InjectOptions
from tests.helm.conftest import CHART, REPO, VALUES_ALL, Helm, find, kinds, load_yaml_docs

CRD = REPO / "manifests" / "crd" / "vpc.modelarts.io_modelartsservices.yaml"
RBAC = REPO / "manifests" / "rbac"
FILES = CHART / "files"


def cli_accepts(args: list[str]) -> tuple[bool, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            build_parser().parse_args(args)
        except SystemExit as exc:
            return exc.code == 0, err.getvalue()
    return True, ""


def pod_specs(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o["spec"]["template"]["spec"] for o in objects if o["kind"] == "Deployment"}


@pytest.mark.parametrize("values", [[], ["-f", str(VALUES_ALL)]], ids=["defaults", "all-features"])
def test_helm_lint_is_clean(helm: Helm, values: list[str]) -> None:
    proc = helm("lint", CHART, "--strict", *values)
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout, proc.stdout + proc.stderr


def test_defaults_render_the_controller_and_nothing_optional(helm: Helm) -> None:
    objects = helm.objects()
    assert kinds(objects) == {
        ("ServiceAccount", "modelarts-agent"), ("Deployment", "modelarts-agent"),
        ("Service", "modelarts-agent-metrics"), ("PodDisruptionBudget", "modelarts-agent"),
        ("ClusterRole", "modelarts-agent-controller"), ("ClusterRoleBinding", "modelarts-agent-controller"),
        ("Role", "modelarts-agent-leader-election"), ("RoleBinding", "modelarts-agent-leader-election"),
        ("ClusterRole", "modelarts-agent-credentials-reader"), ("RoleBinding", "modelarts-agent-credentials-reader"),
    }
    deploy = find(objects, "Deployment")
    assert deploy["spec"]["replicas"] == 2
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[2] == "controller" and "--admin-address=0.0.0.0" in args
    assert "--lease-namespace=modelarts-system" in args and "--lease-name=modelarts-agent-controller" in args
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    metrics = find(objects, "Service", "modelarts-agent-metrics")
    assert metrics["spec"]["ports"] == [{"name": "metrics", "port": 8086, "targetPort": "metrics", "protocol": "TCP"}]
    assert find(objects, "PodDisruptionBudget")["spec"]["minAvailable"] == 1


def test_every_optional_feature_renders(helm: Helm) -> None:
    objects = helm.objects("-f", VALUES_ALL)
    expected = {
        ("Secret", "modelarts-agent-credentials"), ("ConfigMap", "modelarts-gateway-config"),
        ("ServiceAccount", "modelarts-gateway"), ("Role", "modelarts-gateway"), ("RoleBinding", "modelarts-gateway"),
        ("ServiceMonitor", "modelarts-agent"), ("ServiceMonitor", "modelarts-gateway"),
        ("PrometheusRule", "modelarts-agent"), ("ConfigMap", "modelarts-agent-dashboard"),
        ("NetworkPolicy", "modelarts-agent"), ("Deployment", "modelarts-gateway"), ("Service", "modelarts-gateway"),
        ("PodDisruptionBudget", "modelarts-gateway"), ("ClusterRole", "modelarts-agent-legacy-endpoints"),
        ("ModelArtsService", "llm"), ("ModelArtsService", "embeddings"),
    }
    assert expected <= kinds(objects)
    # The gateway: the agent (a native sidecar), an init container that renders the ADS bootstrap
    # for the agent's loopback xDS port, then Envoy (same image) runs it.
    gateway = pod_specs(objects)["modelarts-gateway"]
    agent, init = gateway["initContainers"]
    assert agent["name"] == "agent" and agent["restartPolicy"] == "Always"
    assert agent["args"][2:] == ["sidecar", "--config=/etc/modelarts-gateway/config.yaml",
                                 "--namespace=modelarts-system"]
    assert agent["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "agent-admin"}
    assert agent["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "agent-admin"}
    assert init["args"][:2] == ["render", "bootstrap"]
    assert "--ads=127.0.0.1:18000" in init["args"] and "--gateway" in init["args"]
    assert "--stats-port=9902" in init["args"]
    envoy = gateway["containers"][0]
    assert envoy["command"] == ["/opt/modelarts-agent/bin/envoy"]
    assert envoy["args"][:2] == ["-c", "/var/run/modelarts/bootstrap.yaml"]
    assert not any(a.startswith("--xds-port") for a in pod_specs(objects)["modelarts-agent"]["containers"][0]["args"])
    # CRs: defaults merged, the chart's Secret referenced in the release namespace, other namespaces bound.
    llm = find(objects, "ModelArtsService", "llm")
    assert llm["metadata"]["namespace"] == "modelarts-system"
    assert llm["spec"]["credentialsSecretRef"] == {"name": "modelarts-agent-credentials"}
    assert llm["spec"]["projectId"] == "0123456789abcdef0123456789abcdef"
    embeddings = find(objects, "ModelArtsService", "embeddings")
    assert embeddings["metadata"]["namespace"] == "team-a"
    assert embeddings["spec"]["credentialsSecretRef"] == {"name": "team-a-modelarts"}
    bindings = {o["metadata"]["namespace"] for o in objects
                if o["kind"] == "RoleBinding" and o["metadata"]["name"].endswith("credentials-reader")}
    assert bindings == {"modelarts-system", "team-a"}
    secret = find(objects, "Secret")
    assert set(secret["stringData"]) == {"domain", "user", "password"}


def test_network_policy_limits_ingress_to_metrics_and_egress_to_listed_peers(helm: Helm) -> None:
    policy = find(helm.objects("-f", VALUES_ALL), "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    ingress_ports = [p["port"] for rule in policy["ingress"] for p in rule["ports"]]
    assert ingress_ports == ["metrics"]
    assert all(rule.get("from") for rule in policy["ingress"])
    cidrs = [peer["ipBlock"]["cidr"] for rule in policy["egress"] for peer in rule.get("to", []) if "ipBlock" in peer]
    assert cidrs == ["10.96.0.1/32", "172.20.0.0/24", "100.125.0.0/16"]


def test_prometheus_rule_and_dashboard_are_the_files_verbatim(helm: Helm) -> None:
    objects = helm.objects("-f", VALUES_ALL)
    rule = find(objects, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load((FILES / "prometheus-rules.yaml").read_text())
    # Prometheus' own templates survive: the chart must not have run them through tpl.
    summaries = [r["annotations"]["summary"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert any("{{ $labels.service }}" in s for s in summaries)
    dashboard = find(objects, "ConfigMap", "modelarts-agent-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["data"]["modelarts-agent.json"] == (FILES / "grafana-dashboard.json").read_text().rstrip("\n")
    json.loads(dashboard["data"]["modelarts-agent.json"])


@pytest.mark.parametrize("values", [[], ["-f", str(VALUES_ALL)]], ids=["defaults", "all-features"])
def test_pods_are_restricted_non_root_and_read_only(helm: Helm, values: list[str]) -> None:
    specs = pod_specs(helm.objects(*values))
    assert specs
    restricted = restricted_security_context()
    for name, spec in specs.items():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in spec.get("initContainers", []) + spec["containers"]:
            assert container["securityContext"] == restricted, (name, container["name"])
            assert container["resources"]["limits"]["memory"], (name, container["name"])
            assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"], (name, container["name"])


@pytest.mark.parametrize("values", [[], ["-f", str(VALUES_ALL)]], ids=["defaults", "all-features"])
def test_controller_and_gateway_args_are_accepted_by_the_cli(helm: Helm, values: list[str]) -> None:
    """The chart passes only flags the real CLI knows."""
    for spec in pod_specs(helm.objects(*values)).values():
        for container in spec.get("initContainers", []) + spec["containers"]:
            if container.get("command"):
                continue  # Envoy
            args = [a.replace("$(POD_NAME)", "pod-0") for a in container["args"]]
            ok, err = cli_accepts(args)
            assert ok, f"{container['name']}: {args}: {err}"


def test_allowed_endpoint_hosts_reach_the_controller_and_the_flag_parses(helm: Helm) -> None:
    from agent.controller.endpoints import EndpointAllowList

    defaults = pod_specs(helm.objects())
    assert not any("--allowed-endpoint-hosts" in a for spec in defaults.values()
                   for c in spec["containers"] for a in c.get("args", []))
    objects = helm.objects("--set-json", 'controller.allowedEndpointHosts=["modelarts.internal.example.com",'
                                         '"*.corp.example.net"]')
    args = [a for spec in pod_specs(objects).values() for c in spec["containers"] for a in c.get("args", [])
            if a.startswith("--allowed-endpoint-hosts=")]
    assert args == ["--allowed-endpoint-hosts=modelarts.internal.example.com,*.corp.example.net"]
    allow = EndpointAllowList.parse_flag(args[0].partition("=")[2])
    assert allow.allows("iam.corp.example.net") and allow.allows("iam.cn-north-4.myhuaweicloud.com")
    assert not allow.allows("evil.example.com")


def gateway_config(objects: list[dict[str, Any]], tmp_path: Path) -> AgentConfig:
    """The gateway agent's config file from the ConfigMap, loaded as `sidecar --config` loads it."""
    path = tmp_path / "config.yaml"
    path.write_text(find(objects, "ConfigMap", "modelarts-gateway-config")["data"]["config.yaml"])
    return load_sidecar_config(path, [])


def test_gateway_agent_config_serves_xds_on_loopback_and_writes_no_files(helm: Helm, tmp_path: Path) -> None:
    objects = helm.objects("-f", VALUES_ALL, "--set", "gateway.xdsPort=18500", "--set", "gateway.listenPort=8443")
    config = gateway_config(objects, tmp_path)
    # The modelArtsServices of the release namespace (not team-a's embeddings), then gateway.services.
    assert [s.name for s in config.services] == ["llm", "chat"]
    assert config.xds.enabled and config.xds.address == "127.0.0.1" and config.xds.port == 18500
    assert not config.envoy.files
    assert config.gateway.listen_port == 8443 and config.gateway.route_by_host and config.gateway.route_by_path
    assert config.discovery.allowed_cidrs == ("192.168.0.0/16",)
    assert (config.admin.address, config.admin.port) == ("0.0.0.0", 8087)
    spec = pod_specs(objects)["modelarts-gateway"]
    agent, bootstrap = spec["initContainers"]
    assert "--ads=127.0.0.1:18500" in bootstrap["args"]
    assert spec["containers"][0]["ports"][0] == {"name": "http", "containerPort": 8443, "protocol": "TCP"}
    # Probes and metrics on the pod IP (the env override of admin.address).
    assert agent["env"] == [{"name": "MODELARTS_AGENT__ADMIN__ADDRESS",
                             "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
    # The controller serves no xDS and has no xDS Service.
    assert not any("xds" in name for kind, name in kinds(objects) if kind == "Service")


def test_only_the_gateway_agent_gets_an_api_token(helm: Helm) -> None:
    objects = helm.objects("-f", VALUES_ALL)
    spec = pod_specs(objects)["modelarts-gateway"]
    assert spec["serviceAccountName"] == "modelarts-gateway" and spec["automountServiceAccountToken"] is False
    token_path = "/var/run/secrets/kubernetes.io/serviceaccount"
    mounts = {c["name"]: [m["mountPath"] for m in c["volumeMounts"]]
              for c in spec["initContainers"] + spec["containers"]}
    assert [name for name, paths in mounts.items() if token_path in paths] == ["agent"]
    volume = next(v for v in spec["volumes"] if v["name"] == "kube-api-access")
    assert [next(iter(s)) for s in volume["projected"]["sources"]] == ["serviceAccountToken", "configMap",
                                                                       "downwardAPI"]
    assert find(objects, "Role", "modelarts-gateway")["rules"] == [
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]}]
    binding = find(objects, "RoleBinding", "modelarts-gateway")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "modelarts-gateway",
                                    "namespace": "modelarts-system"}]


def test_gateway_config_change_rolls_the_pods(helm: Helm) -> None:
    def checksum(*args: str) -> str:
        spec = find(helm.objects("-f", VALUES_ALL, *args), "Deployment", "modelarts-gateway")["spec"]
        return str(spec["template"]["metadata"]["annotations"]["checksum/config"])

    assert checksum() == checksum()
    assert checksum() != checksum("--set", "gateway.services={chat,other}")


def test_crd_in_chart_is_byte_identical_to_manifests() -> None:
    assert (CHART / "crds" / CRD.name).read_bytes() == CRD.read_bytes()
    assert [p.name for p in (CHART / "crds").iterdir()] == [CRD.name]


def rules_by_role(objects: list[dict[str, Any]], prefix: str) -> dict[tuple[str, str], Any]:
    """(kind, name without the release prefix) -> rules, for every Role and ClusterRole."""
    return {(o["kind"], o["metadata"]["name"].removeprefix(prefix)): o["rules"]
            for o in objects if o["kind"] in ("Role", "ClusterRole")}


def bindings(objects: list[dict[str, Any]], prefix: str) -> set[tuple[str, str, str, str]]:
    return {(o["kind"], o["roleRef"]["kind"], o["roleRef"]["name"].removeprefix(prefix), s["name"].removeprefix(prefix))
            for o in objects if o["kind"] in ("RoleBinding", "ClusterRoleBinding") for s in o["subjects"]}


@pytest.mark.parametrize("release", ["modelarts-agent", "other"])
def test_chart_rbac_equals_manifests_rbac(helm: Helm, release: str) -> None:
    manifests = [d for path in sorted(RBAC.glob("*.yaml")) if path.name != "sidecar.yaml"
                 for d in load_yaml_docs(path)]
    chart = helm.objects("--set", "controller.legacyEndpoints=true", release=release)
    prefix = "" if release == "modelarts-agent" else "other-"
    ours = rules_by_role(chart, prefix + "modelarts-agent")
    theirs = rules_by_role(manifests, "modelarts-agent")
    # The Lease name follows the release (the Role names exactly one Lease).
    lease = ours[("Role", "-leader-election")][1]["resourceNames"]
    assert lease == [f"{prefix}modelarts-agent-controller"]
    lease[0] = "modelarts-agent-controller"
    assert ours == theirs
    assert bindings(chart, prefix) == bindings(manifests, "")
    if release == "modelarts-agent":  # with the default release name even the object names match
        assert kinds([o for o in chart if o["kind"].endswith(("Role", "RoleBinding"))]) == \
            kinds([o for o in manifests if o["kind"].endswith(("Role", "RoleBinding"))])


def test_chart_sidecar_rbac_equals_manifests_sidecar_rbac(helm: Helm) -> None:
    """sidecar.namespaces gives app namespaces what manifests/rbac/sidecar.yaml gives `my-app`."""
    def essentials(objects: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
        keep = ("rules", "roleRef", "subjects")
        return sorted((o["kind"], o["metadata"]["name"], o["metadata"]["namespace"],
                       json.dumps({k: o[k] for k in keep if k in o}, sort_keys=True)) for o in objects)

    theirs = list(load_yaml_docs(RBAC / "sidecar.yaml"))
    chart = [o for o in helm.objects("--set", "sidecar.namespaces={my-app}")
             if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "sidecar"]
    assert essentials(chart) == essentials(theirs)
    # ... and it is the ServiceAccount inject puts on pods.
    assert InjectOptions().service_account == "modelarts-sidecar"


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "gateway.enabled=true"], "gateway.enabled needs services to route to"),
    (["--set", "credentials.existingSecret=x", "--set", "credentials.token=t"], "set either existingSecret or"),
    (["--set", "credentials.password=p"], "a password needs domain and user too"),
    (["--set", "credentials.ak=a"], "set ak and sk together"),
    (["--set", "modelArtsServices[0].name=x", "--set", "modelArtsServices[0].serviceId=s"],
     "modelArtsServices[0] (x): set credentialsSecretRef"),
    (["--set", "credentials.token=t", "--set", "modelArtsServices[0].name=x",
      "--set", "modelArtsServices[0].serviceId=s"], "modelArtsServices[0] (x): projectId is required"),
], ids=["gateway-without-services", "secret-twice", "password-alone", "ak-alone", "cr-without-secret", "cr-incomplete"])
def test_inconsistent_values_fail_with_a_message(helm: Helm, args: list[str], message: str) -> None:
    proc = helm.template(*args, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


def test_chart_readme_documents_every_top_level_value() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text()
    missing = [key for key in values if f"`{key}" not in readme]
    assert not missing, missing


def test_values_file_passes_the_schema_and_covers_it() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) <= set(schema["properties"])
    assert set(schema["properties"]) - set(values) == {"global"}


def test_chart_version_matches_the_agent() -> None:
    from agent import __version__

    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == __version__

