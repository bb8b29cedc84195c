"""Fixtures for the end-to-end tests: a cluster with a node, the project's image, the ModelArts
emulator as a pod, and the chart installed with `helm install`.

The tests take any kubeconfig: with ``E2E_KUBECONFIG`` set they run against that cluster (kind,
or a real one; the images must already be loaded, see scripts/kind-e2e.sh) and start nothing.
Without it they build the images (scripts/image/all.sh, cached) and start a ``NodeCluster``
(tests/e2e/nodecluster.py) in a private network namespace. Everything the tests check from inside
the cluster goes through ``kubectl exec`` into pods, so it means the same on either.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from modelarts_emulator.config import DEFAULT_DOMAIN, DEFAULT_PASSWORD, DEFAULT_PROJECT_ID

from tests import waiting
from tests.e2e.nodecluster import NodeCluster, leftovers
from tests.kubeenv import KubectlError, default_bin_dir, ensure_binaries

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "modelarts-agent"
CACHE = Path(os.environ.get("MODELARTS_AGENT_CACHE") or REPO / ".cache")
IMAGE_REPOSITORY = os.environ.get("E2E_IMAGE_REPOSITORY", "localhost/modelarts-agent")
IMAGE_TAG = os.environ.get("E2E_IMAGE_TAG", "dev")
IMAGE = f"{IMAGE_REPOSITORY}:{IMAGE_TAG}"
# The emulator's own image (the Dockerfile's `emulator` target: the product image plus the emulator).
EMULATOR_IMAGE = os.environ.get("E2E_EMULATOR_IMAGE", "localhost/modelarts-emulator:dev")
IMAGE_ARCHIVES = [CACHE / "images" / name for name in ("pause.tar", "modelarts-agent.tar", "modelarts-emulator.tar")]

SYSTEM_NS = "modelarts-system"
EMULATOR_NS = "modelarts-emu"
APPS_NS = "apps"
RELEASE = "mas"
EMULATOR_URL = f"http://modelarts.{EMULATOR_NS}.svc.cluster.local:8000"
EMULATOR_HOST = f"modelarts.{EMULATOR_NS}.svc.cluster.local"
GATEWAY_SERVICES = ("gw-a", "gw-b")
GATEWAY_URL = f"http://modelarts-gateway.{SYSTEM_NS}.svc.cluster.local/"
POLL_INTERVAL = 5
WAIT_SCALE = float(os.environ.get("E2E_WAIT_SCALE", "2"))

# Pods in a namespace labelled Pod Security "restricted" must look like this.
RESTRICTED_CONTAINER = {
    "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)
            # A test's time includes its fixtures': the first one builds images and starts the cluster.
            item.add_marker(pytest.mark.timeout(1800))


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.5,
               diagnostics: Callable[[], str] | None = None) -> Any:
    """tests/waiting.py's poll, stretched by E2E_WAIT_SCALE."""
    return waiting.wait_until(check, timeout * WAIT_SCALE, what, interval=interval, diagnostics=diagnostics)


@dataclass
class Kube:
    """kubectl and helm against one cluster."""

    kubeconfig: Path
    kubectl_bin: str
    helm_bin: str
    workdir: Path
    node: NodeCluster | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def _run(self, argv: list[str], *, input: str | None = None, check: bool = True, timeout: float = 120,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout, check=False,
                              env=env, stdin=None if input is not None else subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise KubectlError(proc.returncode, argv, proc.stdout, proc.stderr)
        return proc

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self._run([self.kubectl_bin, f"--kubeconfig={self.kubeconfig}", *args], input=input, check=check,
                         timeout=timeout)

    def helm(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        home = self.workdir / "helm"
        env = {**os.environ, "HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
               "HELM_DATA_HOME": str(home / "data")}
        return self._run([self.helm_bin, f"--kubeconfig={self.kubeconfig}", *args], check=check, timeout=timeout,
                         env=env)

    def apply(self, *docs: dict[str, Any] | str | list[dict[str, Any]]) -> None:
        flat = [d for doc in docs for d in (doc if isinstance(doc, list) else [doc])]
        text = "\n---\n".join(d if isinstance(d, str) else yaml.safe_dump(d, sort_keys=False) for d in flat)
        self.kubectl("apply", "-f", "-", input=text)

    def get_json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.get_json("pods", "-n", namespace, "-l", selector)["items"]
        return [p for p in items if not p["metadata"].get("deletionTimestamp")]

    def ready_pods(self, namespace: str, selector: str) -> list[str]:
        ready = []
        for pod in self.pods(namespace, selector):
            conditions = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
            if pod.get("status", {}).get("phase") == "Running" and conditions.get("Ready") == "True":
                ready.append(pod["metadata"]["name"])
        return sorted(ready)

    def wait_ready(self, namespace: str, selector: str, count: int, timeout: float = 120) -> list[str]:
        return wait_until(lambda: (pods := self.ready_pods(namespace, selector)) and len(pods) == count and pods,
                          timeout, f"{count} Ready pods {selector} in {namespace}",
                          diagnostics=lambda: self.describe_pods(namespace, selector))

    def describe_pods(self, namespace: str, selector: str) -> str:
        described = self.kubectl("describe", "pods", "-n", namespace, "-l", selector, check=False, timeout=30)
        logs = self.kubectl("logs", "-n", namespace, "-l", selector, "--all-containers", "--prefix", "--tail=40",
                            check=False, timeout=30)
        return (described.stdout[-5000:] + "\n--- logs ---\n" + logs.stdout[-5000:] + logs.stderr[-1000:])

    def exec_python(self, namespace: str, pod: str, code: str, *, container: str | None = None,
                    timeout: float = 120) -> Any:
        """Run Python code in a pod's container (its image has the agent's Python); returns its JSON output."""
        argv = ["exec", "-i", "-n", namespace, pod]
        if container:
            argv += ["-c", container]
        proc = self.kubectl(*argv, "--", "python", "-", input=textwrap.dedent(code), timeout=timeout)
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        return json.loads(lines[-1]) if lines else None

    def namespace(self, name: str, *, restricted: bool = True) -> None:
        labels = {"kubernetes.io/metadata.name": name}
        if restricted:
            labels.update({"pod-security.kubernetes.io/enforce": "restricted",
                           "pod-security.kubernetes.io/enforce-version": "latest"})
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})


def build_images() -> float:
    t = time.monotonic()
    proc = subprocess.run(["bash", str(REPO / "scripts" / "image" / "all.sh")], capture_output=True, text=True,
                          timeout=1800, check=False, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        pytest.fail(f"scripts/image/all.sh failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-6000:]}",
                    pytrace=False)
    return time.monotonic() - t


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    workdir = tmp_path_factory.mktemp("e2e")
    external = os.environ.get("E2E_KUBECONFIG")
    if external:
        kubectl, helm = shutil.which("kubectl"), shutil.which("helm")
        if not kubectl or not helm:
            pytest.fail("E2E_KUBECONFIG is set: kubectl and helm must be on PATH", pytrace=False)
        yield Kube(Path(external), kubectl, helm, workdir)
        return
    bin_dir = ensure_binaries() if not os.environ.get("KUBEENV_BIN_DIR") else default_bin_dir()
    image_seconds = build_images()
    node = NodeCluster(images=IMAGE_ARCHIVES)
    try:
        node.start()
    except Exception as exc:
        pytest.fail(f"the cluster did not start: {exc}", pytrace=False)
    kube = Kube(node.kubeconfig_path, str(bin_dir / "kubectl"), str(bin_dir / "helm"), workdir, node=node)
    kube.timings.update({"image build": image_seconds, **{f"cluster: {k}": v for k, v in node.timings.items()}})
    try:
        yield kube
    finally:
        print("\n[e2e] timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in kube.timings.items()), flush=True)
        t = time.monotonic()
        node.stop()
        print(f"[e2e] cluster teardown {time.monotonic() - t:.1f}s", flush=True)
        left = leftovers()
        assert left == [], f"the cluster left these behind: {left}"


# --- the emulator as a pod -------------------------------------------------------------------------

EMULATOR_SERVICES = [
    {"name": "llm", "service_id": "svc-llm", "instances": 3},
    {"name": "llm-hl", "service_id": "svc-llm-hl", "instances": 2},
    {"name": "llm-inject", "service_id": "svc-llm-inject", "instances": 3},
    {"name": "gw-a", "service_id": "svc-gw-a", "instances": 2},
    {"name": "gw-b", "service_id": "svc-gw-b", "instances": 1},
    {"name": "llm-run", "service_id": "svc-llm-run", "instances": 2},
]


# Every ModelArtsService name the tests create (each gets its own IAM user in the emulator).
E2E_MAS_NAMES = ("llm", "llm-hl", "shown", "after-handover", "llm-inject", "gw-a", "gw-b", "llm-rotate", "lc",
                 "run-agent")


def container(name: str, args: list[str], **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": IMAGE, "imagePullPolicy": "IfNotPresent", "args": args,
            "securityContext": RESTRICTED_CONTAINER, **extra}


def pod_spec(containers: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": containers, "volumes": extra.pop("volumes", []), **extra}


@dataclass
class ClusterEmulator:
    kube: Kube
    pod: str = ""

    def admin(self, code: str) -> Any:
        """Run code with ``admin`` (an EmulatorAdmin on the pod's admin port) in the emulator pod."""
        program = ("import json\nfrom modelarts_emulator.client import EmulatorAdmin\n"
                   "admin = EmulatorAdmin('http://127.0.0.1:8001')\n" + textwrap.dedent(code))
        return self.kube.exec_python(EMULATOR_NS, self.pod, program, container="emulator")

    def instances(self, service_id: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.admin(
            f"print(json.dumps([{{'id': i.instance_id, 'address': i.address, 'state': i.state}}"
            f" for i in admin.instances({service_id!r})]))")
        return result

    def scale(self, service_id: str, count: int) -> None:
        self.admin(f"admin.scale({service_id!r}, {count}, wait=True)\nprint('null')")

    def kill(self, instance_id: str) -> None:
        self.admin(f"admin.kill({instance_id!r})\nprint('null')")

    def served(self, instance_id: str) -> int:
        """Requests the instance has answered (health checks excluded)."""
        count: int = self.admin(f"print(admin.instance({instance_id!r}).served)")
        return count

    def modelarts_calls(self, service_id: str | None = None) -> int:
        """Endpoint look-ups the emulator has answered (all of them, or for one service)."""
        count: int = self.admin(textwrap.dedent(f"""\
            calls = [c for c in admin.calls() if c.api == 'modelarts' and c.path.endswith('/predict/endpoints')]
            sid = {service_id!r}
            print(len([c for c in calls if sid is None or sid in c.path]))
            """))
        return count


@pytest.fixture(scope="session")
def emulator(kube: Kube) -> ClusterEmulator:
    kube.namespace(EMULATOR_NS)
    users = [{"domain": DEFAULT_DOMAIN, "name": user_for(n)[0], "password": user_for(n)[1],
              "project_id": DEFAULT_PROJECT_ID} for n in E2E_MAS_NAMES]
    scenario = {"users": users, "services": [{**s, "schema": "http"} for s in EMULATOR_SERVICES]}
    args = ["--config", "/etc/emulator/scenario.yaml", "--host", "0.0.0.0", "--port", "8000",
            "--admin-port", "8001", "--instance-address", "$(POD_IP)"]
    pod_ip = {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
    emu = container("emulator", args, image=EMULATOR_IMAGE, env=[pod_ip],
                    ports=[{"name": "api", "containerPort": 8000}, {"name": "admin", "containerPort": 8001}],
                    readinessProbe={"tcpSocket": {"port": 8000}, "periodSeconds": 2},
                    volumeMounts=[{"name": "scenario", "mountPath": "/etc/emulator"},
                                  {"name": "tmp", "mountPath": "/tmp"}])
    kube.apply(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "scenario", "namespace": EMULATOR_NS},
         "data": {"scenario.yaml": yaml.safe_dump(scenario)}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "emulator", "namespace": EMULATOR_NS},
         "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "emulator"}},
                  "template": {"metadata": {"labels": {"app": "emulator"}},
                               "spec": pod_spec([emu], volumes=[
                                   {"name": "scenario", "configMap": {"name": "scenario"}},
                                   {"name": "tmp", "emptyDir": {}}])}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "modelarts", "namespace": EMULATOR_NS},
         "spec": {"selector": {"app": "emulator"}, "ports": [{"name": "api", "port": 8000, "targetPort": 8000}]}},
    )
    pod = kube.wait_ready(EMULATOR_NS, "app=emulator", 1, timeout=120)[0]
    return ClusterEmulator(kube, pod)


# --- the app namespace and the chart -----------------------------------------------------------------

def user_for(name: str) -> tuple[str, str]:
    """Each ModelArtsService polls as its own IAM user: the 20 calls/min budget is per user, and one
    user shared by every test's services would stretch each poll interval."""
    return f"user-{name}", f"pw-{name}-{DEFAULT_PASSWORD}"


def credentials_secret(name: str, password: str | None = None, namespace: str = APPS_NS) -> dict[str, Any]:
    user, default_password = user_for(name)
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"creds-{name}", "namespace": namespace},
            "stringData": {"domain": DEFAULT_DOMAIN, "user": user, "password": password or default_password}}


def mas(name: str, service_id: str, namespace: str = APPS_NS, **spec: Any) -> list[dict[str, Any]]:
    """A ModelArtsService and its credentials Secret (apply both)."""
    body = {"apiVersion": "vpc.modelarts.io/v1alpha1", "kind": "ModelArtsService",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"projectId": DEFAULT_PROJECT_ID, "serviceId": service_id, "modelartsUrl": EMULATOR_URL,
                     "iamUrl": EMULATOR_URL, "credentialsSecretRef": {"name": f"creds-{name}"},
                     "port": 80, "pollInterval": f"{POLL_INTERVAL}s", **spec}}
    return [credentials_secret(name, namespace=namespace), body]


def chart_values(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "image": {"repository": IMAGE_REPOSITORY, "tag": IMAGE_TAG, "pullPolicy": "Never"},
        "rbac": {"credentialsNamespaces": [APPS_NS]},
        "controller": {"leaseDurationSeconds": 10},
        "sidecar": {"namespaces": [APPS_NS]},
        "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "384Mi"}},
    }
    if "allowedEndpointHosts" in (CHART / "values.yaml").read_text():
        # The controller sends a namespace's credentials only to allowed hosts: let it reach the emulator.
        values["controller"]["allowedEndpointHosts"] = [EMULATOR_HOST]
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    return values


def helm_install(kube: Kube, release: str, namespace: str, values: dict[str, Any], *, upgrade: bool = False) -> None:
    path = kube.workdir / f"values-{release}-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(values))
    verb = ["upgrade", "--install"] if upgrade else ["install"]
    try:
        kube.helm(*verb, release, str(CHART), "-n", namespace, "-f", str(path), "--wait", "--timeout", "180s")
    except KubectlError as exc:
        pytest.fail(f"{exc}\n{kube.describe_pods(namespace, f'app.kubernetes.io/instance={release}')}", pytrace=False)


@pytest.fixture(scope="session")
def apps(kube: Kube) -> str:
    kube.namespace(APPS_NS)
    return APPS_NS


@pytest.fixture(scope="session")
def release(kube: Kube, emulator: ClusterEmulator, apps: str) -> str:
    """The chart, installed once: two controller replicas and the gateway, in a restricted namespace.

    The gateway's ModelArtsServices come with the release (the chart's modelArtsServices, the GitOps
    way), so `helm install --wait` sees the gateway Ready: it is ready once it has its routes.
    """
    kube.namespace(SYSTEM_NS)
    kube.apply(*[credentials_secret(name, namespace=SYSTEM_NS) for name in GATEWAY_SERVICES])
    gateway_mas = []
    for name in GATEWAY_SERVICES:
        spec = mas(name, f"svc-{name}", namespace=SYSTEM_NS)[1]["spec"]
        gateway_mas.append({"name": name, **spec})
    t = time.monotonic()
    helm_install(kube, RELEASE, SYSTEM_NS, chart_values(
        gateway={"enabled": True, "replicaCount": 1, "services": list(GATEWAY_SERVICES)},
        modelArtsServices=gateway_mas))
    kube.timings["helm install --wait"] = time.monotonic() - t
    return RELEASE


def controller_selector() -> str:
    return "app.kubernetes.io/component=controller"


def lease_holder(kube: Kube) -> str:
    lease = kube.get_json("lease", "-n", SYSTEM_NS, f"{RELEASE}-modelarts-agent-controller")
    holder: str = lease["spec"].get("holderIdentity") or ""
    return holder


def app_pod(kube: Kube, name: str, namespace: str = APPS_NS) -> str:
    """A plain app pod (the agent's image, sleeping) to make requests from inside the cluster."""
    spec = pod_spec([container("app", [], command=["python", "-c", "import time; time.sleep(86400)"])],
                    terminationGracePeriodSeconds=1)
    kube.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace,
                                                                "labels": {"app": name}}, "spec": spec})
    kube.wait_ready(namespace, f"app={name}", 1, timeout=90)
    return name


LOAD_PROGRAM = """\
import json, threading, time, urllib.request, urllib.error
URL, SECONDS, WORKERS, HEADERS = {url!r}, {seconds!r}, {workers!r}, {headers!r}
counts, errors, lock = {{}}, [], threading.Lock()
def worker():
    end = time.monotonic() + SECONDS
    while time.monotonic() < end:
        req = urllib.request.Request(URL, headers=HEADERS)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                who = json.loads(resp.read()).get("instance_id", "?")
        except Exception as exc:
            with lock:
                errors.append(repr(exc)[:200])
            time.sleep(0.05)
            continue
        with lock:
            counts[who] = counts.get(who, 0) + 1
        time.sleep({pause!r})
threads = [threading.Thread(target=worker) for _ in range(WORKERS)]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps({{"by_instance": counts, "ok": sum(counts.values()), "failed": len(errors), "errors": errors[:10]}}))
"""


def load(kube: Kube, pod: str, url: str, *, seconds: float = 5, workers: int = 4, pause: float = 0.01,
         headers: dict[str, str] | None = None, container_name: str | None = None,
         namespace: str = APPS_NS) -> dict[str, Any]:
    """GET ``url`` from inside ``pod`` for ``seconds`` with ``workers`` threads; counts by instance."""
    program = LOAD_PROGRAM.format(url=url, seconds=seconds, workers=workers, headers=headers or {}, pause=pause)
    result: dict[str, Any] = kube.exec_python(namespace, pod, program, container=container_name,
                                              timeout=seconds + 90)
    return result
