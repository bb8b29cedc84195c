"""An app Deployment through `modelarts-agent inject | kubectl apply`: its Envoy sidecar balances over
the instances, a killed instance fails no idempotent request, and the sidecar never calls ModelArts."""

from __future__ import annotations

import subprocess
import sys
import threading
from typing import Any

import yaml

from tests.e2e.conftest import (
    APPS_NS,
    IMAGE,
    RESTRICTED_CONTAINER,
    ClusterEmulator,
    Kube,
    load,
    mas,
    pod_spec,
    wait_until,
)

METRICS = """\
import json, urllib.request
text = urllib.request.urlopen("http://127.0.0.1:8086/metrics", timeout=5).read().decode()
calls = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith("modelarts_agent_discovery_calls_total{"))
print(json.dumps({"discovery_calls": calls, "has_metric_family": "modelarts_agent_discovery_calls" in text}))
"""


def app_deployment(name: str) -> dict[str, Any]:
    app = {"name": "app", "image": IMAGE, "imagePullPolicy": "IfNotPresent",
           "command": ["python", "-c", "import time; time.sleep(86400)"], "securityContext": RESTRICTED_CONTAINER}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": APPS_NS},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": pod_spec([app], terminationGracePeriodSeconds=2)}}}


def inject(manifest: dict[str, Any], *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "agent", "inject", "-f", "-", "--image", IMAGE, *args],
                          input=yaml.safe_dump(manifest), capture_output=True, text=True, timeout=60, check=True)
    return proc.stdout


def test_injected_sidecar_balances_fails_over_and_never_calls_modelarts(
        kube: Kube, emulator: ClusterEmulator, release: str) -> None:
    kube.apply(mas("llm-inject", "svc-llm-inject"))
    instances = emulator.instances("svc-llm-inject")
    injected = inject(app_deployment("injected"), "--service", "llm-inject=10080")
    kube.apply(injected)
    pod = kube.wait_ready(APPS_NS, "app=injected", 1, timeout=120)[0]
    spec = kube.get_json("pod", "-n", APPS_NS, pod)["spec"]
    names = {c["name"] for c in spec.get("initContainers", []) + spec["containers"]}
    assert {"app"} < names and len(names) >= 3, names  # the app plus the agent and Envoy sidecars
    # The sidecar holds no ModelArts credentials: no Secret volume besides the service-account token.
    assert not [v for v in spec.get("volumes", []) if "secret" in v], spec["volumes"]

    url = "http://127.0.0.1:10080/"
    wait_until(lambda: load(kube, pod, url, seconds=1, workers=2, container_name="app")["ok"] > 0, 60,
               "the sidecar Envoy to route to the instances")
    spread = load(kube, pod, url, seconds=4, workers=4, container_name="app")
    assert spread["failed"] == 0, spread
    assert sorted(spread["by_instance"]) == sorted(i["id"] for i in instances), spread

    # Kill one instance under load: retries and outlier detection hide it from the app.
    victim = instances[0]["id"]
    result: dict[str, Any] = {}
    loader = threading.Thread(target=lambda: result.update(
        load(kube, pod, url, seconds=12, workers=4, container_name="app")))
    served = emulator.served(victim)
    loader.start()
    # Killed while it is serving this load (not before the load reached it), with most of the run to go.
    wait_until(lambda: emulator.served(victim) >= served + 50, 8, "the load to reach the victim")
    emulator.kill(victim)
    loader.join(timeout=120)
    print(f"\n[e2e] kill under load through the injected sidecar: {result.get('ok')} requests, "
          f"{result.get('failed')} failed")
    assert result["failed"] == 0, result
    assert result["ok"] > 100, result
    survivors = {i["id"] for i in instances[1:]}
    assert survivors <= set(result["by_instance"]), result

    # The sidecar made no ModelArts call: its own counter, and it exports the family at all.
    metrics = kube.exec_python(APPS_NS, pod, METRICS, container="app")
    assert metrics["discovery_calls"] == 0, metrics
    # ... and the controller alone keeps polling within its budget meanwhile.
    assert emulator.modelarts_calls("svc-llm-inject") > 0
