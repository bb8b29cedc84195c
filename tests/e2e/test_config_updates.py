"""Mounted config and credentials, updated in place twice through the kubelet's real `..data`
symlink swap, reach a running agent (`run` mode, a ConfigMap and a Secret volume); a credentials
Secret updated twice through the API reaches the running controller."""

from __future__ import annotations

from typing import Any

import yaml

from tests.e2e.conftest import (
    APPS_NS,
    EMULATOR_URL,
    IMAGE,
    RESTRICTED_CONTAINER,
    ClusterEmulator,
    Kube,
    credentials_secret,
    mas,
    pod_spec,
    user_for,
    wait_until,
)

STATUS = """\
import json, urllib.request
print(json.dumps(json.loads(urllib.request.urlopen("http://127.0.0.1:8086/status", timeout=5).read())))
"""


def agent_config(services: list[tuple[str, str, int]]) -> str:
    user, _ = user_for("run-agent")
    return yaml.safe_dump({
        "modelarts": {"iam_url": EMULATOR_URL, "modelarts_url": EMULATOR_URL,
                      "project_id": "0123456789abcdef0123456789abcdef"},
        "auth": {"mode": "password", "domain": "demo-domain", "user": user,
                 "password_file": "/etc/modelarts/password"},
        "discovery": {"default_poll_interval_seconds": 5},
        "envoy": {"output_dir": "/var/run/modelarts/envoy"},
        "admin": {"address": "127.0.0.1", "port": 8086},
        "services": [{"name": n, "service_id": sid, "listen_port": port} for n, sid, port in services],
    })


def config_map(services: list[tuple[str, str, int]]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "run-agent", "namespace": APPS_NS},
            "data": {"agent.yaml": agent_config(services)}}


def password_secret(password: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "run-agent-password", "namespace": APPS_NS},
            "stringData": {"password": password}}


def status(kube: Kube, pod: str) -> dict[str, Any]:
    result: dict[str, Any] = kube.exec_python(APPS_NS, pod, STATUS, container="agent")
    return result


def synced_services(kube: Kube, pod: str) -> dict[str, bool]:
    return {s["name"]: bool(s["synced"] and s["endpoints"] and not s["last_error"])
            for s in status(kube, pod)["services"]}


def revoke_tokens(emulator: ClusterEmulator) -> bool:
    """The emulator forgets every token, so the next look-up logs in again with whatever password the
    agent holds now (a token from the old password would otherwise stay good for 24 h). Always False,
    so it can lead a wait's check."""
    emulator.admin("admin.revoke_tokens()\nprint('null')")
    return False


def test_configmap_and_secret_volume_updates_reach_a_running_agent(kube: Kube, emulator: ClusterEmulator,
                                                                   release: str) -> None:
    _, password = user_for("run-agent")
    first = [("llm-run", "svc-llm-run", 10081)]
    agent = {"name": "agent", "image": IMAGE, "imagePullPolicy": "IfNotPresent",
             "args": ["--log-format=json", "run", "--config", "/etc/agent/agent.yaml"],
             "securityContext": RESTRICTED_CONTAINER,
             "volumeMounts": [{"name": "config", "mountPath": "/etc/agent", "readOnly": True},
                              {"name": "password", "mountPath": "/etc/modelarts", "readOnly": True},
                              {"name": "run", "mountPath": "/var/run/modelarts"},
                              {"name": "tmp", "mountPath": "/tmp"}]}
    volumes = [{"name": "config", "configMap": {"name": "run-agent"}},
               {"name": "password", "secret": {"secretName": "run-agent-password"}},
               {"name": "run", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}]
    kube.apply(config_map(first), password_secret(password), {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "run-agent", "namespace": APPS_NS},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "run-agent"}},
                 "template": {"metadata": {"labels": {"app": "run-agent"}},
                              "spec": pod_spec([agent], volumes=volumes, terminationGracePeriodSeconds=2)}}})
    pod = wait_until(lambda: kube.pods(APPS_NS, "app=run-agent") and
                     kube.pods(APPS_NS, "app=run-agent")[0]["status"].get("phase") == "Running" and
                     kube.pods(APPS_NS, "app=run-agent")[0]["metadata"]["name"], 120, "the run-mode agent pod",
                     diagnostics=lambda: kube.describe_pods(APPS_NS, "app=run-agent"))
    logs = lambda: kube.describe_pods(APPS_NS, "app=run-agent")  # noqa: E731
    wait_until(lambda: synced_services(kube, pod) == {"llm-run": True}, 60, "llm-run synced", diagnostics=logs)

    # ConfigMap, update 1 (add a service) and update 2 (drop the first): the kubelet swaps ..data each time.
    second = [*first, ("gw-b", "svc-gw-b", 10082)]
    kube.apply(config_map(second))
    wait_until(lambda: synced_services(kube, pod) == {"llm-run": True, "gw-b": True}, 90,
               "the first ConfigMap update to reach the agent", diagnostics=logs)
    kube.apply(config_map([("gw-b", "svc-gw-b", 10082)]))
    wait_until(lambda: synced_services(kube, pod) == {"gw-b": True}, 90,
               "the second ConfigMap update to reach the agent", diagnostics=logs)

    # Secret, update 1: a wrong password (and the emulator forgets its tokens, so the agent must log in
    # again): the agent sees it and its polls fail. Update 2: the right one again, and it recovers.
    kube.apply(password_secret("not-the-password"))
    wait_until(lambda: revoke_tokens(emulator) or any(s["last_error"] for s in status(kube, pod)["services"]), 90,
               "the first Secret update (a wrong password) to reach the agent", diagnostics=logs)
    kube.apply(password_secret(password))
    wait_until(lambda: revoke_tokens(emulator) or synced_services(kube, pod) == {"gw-b": True}, 90,
               "the second Secret update (the right password) to reach the agent", diagnostics=logs)
    text = kube.kubectl("logs", "-n", APPS_NS, pod, "-c", "agent").stdout
    assert password not in text and "not-the-password" not in text


def test_credentials_secret_updated_twice_reaches_the_controller(kube: Kube, emulator: ClusterEmulator,
                                                                 release: str) -> None:
    kube.apply(mas("llm-rotate", "svc-llm"))

    def condition(kind: str) -> str:
        return kube.kubectl("get", "mas", "llm-rotate", "-n", APPS_NS, "-o",
                            f"jsonpath={{.status.conditions[?(@.type=='{kind}')].status}}").stdout

    wait_until(lambda: condition("Synced") == "True", 60, "llm-rotate synced")
    kube.apply(credentials_secret("llm-rotate", password="wrong-password"))
    wait_until(lambda: revoke_tokens(emulator) or condition("Synced") == "False", 90,
               "the wrong password to reach the controller")
    kube.apply(credentials_secret("llm-rotate"))
    wait_until(lambda: revoke_tokens(emulator) or condition("Synced") == "True", 90,
               "the right password to reach the controller")
