"""Fixtures for the controller tests: a real kube-apiserver (tests/kubeenv.py), the CRD and RBAC
from manifests/, the ModelArts emulator with instances on 192.168.205.x, and agent processes.

The instance addresses must be private (the apiserver refuses loopback ones in EndpointSlices)
and must still carry traffic, so these tests run inside the private network namespace that
scripts/vpc-netns sets up (`make test` does). Every process started here is stopped at teardown.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from modelarts_emulator import Emulator, EmulatorConfig
from modelarts_emulator.config import (
    DEFAULT_AK,
    DEFAULT_DOMAIN,
    DEFAULT_PASSWORD,
    DEFAULT_PROJECT_ID,
    DEFAULT_SK,
    DEFAULT_USER,
)

from tests import kubeenv, waiting
from tests.kubeenv import KubeTestEnv, free_port

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "manifests" / "crd" / "vpc.modelarts.io_modelartsservices.yaml"
RBAC = REPO / "manifests" / "rbac"
SYSTEM_NS = "modelarts-system"
CONTROLLER_SA = "modelarts-agent"
LEASE = "modelarts-agent-controller"
VPC_PROBE_IP = "192.168.205.58"
VPC_PREFIX = "192.168.205."

# Second and third IAM users of the emulator (the first is the emulator's default demo user).
OTHER_USERS = [{"domain": DEFAULT_DOMAIN, "name": "rotated-user", "password": "rotated-password"},
               {"domain": DEFAULT_DOMAIN, "name": "leader-user", "password": "leader-password"}]

pytestmark = pytest.mark.kube

kube_env = kubeenv.kube_env


def inside_vpc_netns() -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((VPC_PROBE_IP, 0))
        except OSError:
            return False
    return True


@pytest.fixture(scope="session", autouse=True)
def vpc_netns() -> None:
    if not inside_vpc_netns():
        pytest.fail(
            f"the Kubernetes tests need the private 'peered VPC' network namespace ({VPC_PROBE_IP} is not "
            f"bindable here). Run them through scripts/vpc-netns, e.g.\n"
            f"    scripts/vpc-netns .venv/bin/pytest tests/kube -q\n"
            f"(`make test` does this for the whole suite).", pytrace=False)


# Extra context for a timed-out wait (the running agents' log tails): a flaky wait is only fixable with it.
DIAGNOSTICS: list[Callable[[], str]] = []


def diagnostics() -> str:
    parts = []
    for source in DIAGNOSTICS:
        with contextlib.suppress(Exception):
            parts.append(source())
    return "\n".join(parts)


# Waits are upper bounds for things that normally take a few seconds; a shared CI machine can stall
# processes for many seconds, so they are stretched. Timing properties (hand-over within the lease
# duration, ...) are asserted on measured times after the wait, never by a wait's timeout alone.
WAIT_SCALE = float(os.environ.get("KUBE_TESTS_WAIT_SCALE", "3"))


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    """tests/waiting.py's poll, stretched by KUBE_TESTS_WAIT_SCALE, with the running agents' log tails."""
    return waiting.wait_until(check, timeout * WAIT_SCALE, what, interval=interval, diagnostics=diagnostics)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


# --- the cluster ---------------------------------------------------------------------------------


@dataclass
class Cluster:
    env: KubeTestEnv
    controller_kubeconfig: Path
    workdir: Path

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                kubeconfig: Path | None = None) -> subprocess.CompletedProcess[str]:
        return self.env.kubectl(*args, check=check, input=input, kubeconfig=kubeconfig)

    def apply(self, *objects: dict[str, Any], check: bool = True) -> subprocess.CompletedProcess[str]:
        doc = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
        return self.kubectl("apply", "-f", "-", input=json.dumps(doc), check=check)

    def get_json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def slices(self, namespace: str, service: str) -> list[dict[str, Any]]:
        items = self.get_json("endpointslices", "-n", namespace, "-l", f"kubernetes.io/service-name={service}")
        return list(items["items"])

    def slice_endpoints(self, namespace: str, service: str) -> set[tuple[str, int]]:
        found = set()
        for item in self.slices(namespace, service):
            ports = [p["port"] for p in item.get("ports") or []]
            for endpoint in item.get("endpoints") or []:
                for address in endpoint["addresses"]:
                    found.update((address, port) for port in ports)
        return found

    def mas(self, namespace: str, name: str) -> dict[str, Any]:
        return self.get_json("mas", name, "-n", namespace)  # type: ignore[no-any-return]

    def condition(self, namespace: str, name: str, kind: str) -> dict[str, Any]:
        for cond in (self.mas(namespace, name).get("status") or {}).get("conditions") or []:
            if cond["type"] == kind:
                return cond  # type: ignore[no-any-return]
        return {}

    def sa_kubeconfig(self, namespace: str, account: str) -> Path:
        token = self.env.token_for_service_account(namespace, account)
        return self.env.kubeconfig_for_token(token, self.workdir / f"{namespace}-{account}.kubeconfig",
                                             namespace=namespace)


def manifests(name: str, namespace: str | None = None) -> list[dict[str, Any]]:
    """A manifest file's objects; with `namespace`, moved (object and ServiceAccount subjects) there."""
    docs = [d for d in yaml.safe_load_all((RBAC / name).read_text()) if d]
    if namespace:
        for doc in docs:
            doc["metadata"]["namespace"] = namespace
            for subject in doc.get("subjects") or []:
                if subject.get("kind") == "ServiceAccount":
                    subject["namespace"] = namespace
    return docs


@pytest.fixture(scope="session")
def cluster(kube_env: KubeTestEnv, tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    kube_env.kubectl("apply", "-f", str(CRD))
    kube_env.kubectl("wait", "--for=condition=Established", "--timeout=30s",
                     "crd/modelartsservices.vpc.modelarts.io")
    kube_env.kubectl("create", "namespace", SYSTEM_NS)
    for name in ("controller-serviceaccount.yaml", "controller-clusterrole.yaml",
                 "controller-leader-election-role.yaml", "credentials-reader-clusterrole.yaml",
                 "credentials-reader-rolebinding.yaml"):
        kube_env.kubectl("apply", "-f", str(RBAC / name))
    workdir = tmp_path_factory.mktemp("kube-cluster")
    token = kube_env.token_for_service_account(SYSTEM_NS, CONTROLLER_SA)
    kubeconfig = kube_env.kubeconfig_for_token(token, workdir / "controller.kubeconfig")
    return Cluster(kube_env, kubeconfig, workdir)


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace whose Secrets the controller may read (the documented RoleBinding)."""
    name = unique("mas")
    cluster.kubectl("create", "namespace", name)
    cluster.apply(*manifests("credentials-reader-rolebinding.yaml", name))
    # The binding names the controller's ServiceAccount in modelarts-system, not one in `name`.
    cluster.kubectl("patch", "rolebinding", "modelarts-agent-credentials-reader", "-n", name, "--type=json",
                    "-p", json.dumps([{"op": "replace", "path": "/subjects/0/namespace", "value": SYSTEM_NS}]))
    yield name
    # CRs first (quick, no finalizers), so a cluster-wide controller of a later test never sees them.
    cluster.kubectl("delete", "mas", "--all", "-n", name, "--wait=false", check=False)
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


# --- the emulator --------------------------------------------------------------------------------


def vpc_addresses(first: int, count: int) -> list[str]:
    return [f"{VPC_PREFIX}{first + i}" for i in range(count)]


def make_emulator(services: list[dict[str, Any]]) -> Emulator:
    users = [{"domain": DEFAULT_DOMAIN, "name": DEFAULT_USER, "password": DEFAULT_PASSWORD,
              "access_keys": [{"ak": DEFAULT_AK, "sk": DEFAULT_SK}]}, *OTHER_USERS]
    return Emulator(EmulatorConfig.model_validate({"users": users, "services": services}))


@pytest.fixture
def emulators() -> Iterator[Callable[[list[dict[str, Any]]], Emulator]]:
    started: list[Emulator] = []

    def start(services: list[dict[str, Any]]) -> Emulator:
        emu = make_emulator(services)
        started.append(emu)
        return emu.start()

    yield start
    for emu in started:
        emu.stop()


def modelarts_calls(emu: Emulator, user: str | None = None, service_id: str | None = None) -> list[Any]:
    return [c for c in emu.admin.calls(api="modelarts")
            if (user is None or c.user == user) and (service_id is None or c.service_id == service_id)]


# --- CRs and Secrets -----------------------------------------------------------------------------


def password_secret(namespace: str, name: str, user: str = DEFAULT_USER,
                    password: str = DEFAULT_PASSWORD) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
            "stringData": {"domain": DEFAULT_DOMAIN, "user": user, "password": password}}


def mas(namespace: str, name: str, emu: Emulator, service_id: str, secret: str, **spec: Any) -> dict[str, Any]:
    body = {"projectId": DEFAULT_PROJECT_ID, "serviceId": service_id, "modelartsUrl": emu.modelarts_url,
            "iamUrl": emu.iam_url, "credentialsSecretRef": {"name": secret}, "pollInterval": "1s",
            "allowedCIDRs": ["192.168.205.0/24"], **spec}
    return {"apiVersion": "vpc.modelarts.io/v1alpha1", "kind": "ModelArtsService",
            "metadata": {"name": name, "namespace": namespace}, "spec": body}


# --- agent processes -----------------------------------------------------------------------------


class AgentProcess:
    def __init__(self, argv: list[str], log_path: Path, admin_port: int) -> None:
        self.argv = argv
        self.log_path = log_path
        self.admin_port = admin_port
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "agent", "--log-format", "text", *argv],
                                     stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO,
                                     start_new_session=True)

    def admin(self, path: str) -> Any:
        resp = requests.get(f"http://127.0.0.1:{self.admin_port}{path}", timeout=3)
        return resp.json() if path == "/status" else resp

    def status(self) -> dict[str, Any]:
        return self.admin("/status")  # type: ignore[no-any-return]

    def is_leader(self) -> bool:
        try:
            return bool(self.status()["leader"])
        except (requests.RequestException, ValueError, KeyError):
            return False

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return int(self.proc.returncode)


EMULATOR_HOSTS = "127.0.0.1,localhost"


@dataclass
class Agents:
    cluster: Cluster
    workdir: Path

    def __post_init__(self) -> None:
        self.started: list[AgentProcess] = []

    def controller(self, identity: str, namespace: str | None, lease_duration: float = 6.0,
                   extra: tuple[str, ...] = ()) -> AgentProcess:
        port = free_port()
        argv = ["controller", "--kubeconfig", str(self.cluster.controller_kubeconfig),
                "--lease-namespace", SYSTEM_NS, "--lease-name", LEASE, "--identity", identity,
                "--lease-duration", str(lease_duration), "--admin-port", str(port),
                "--secret-refresh-seconds", "1",
                # The emulators listen on loopback, not on a Huawei Cloud API host: allow them explicitly.
                "--allowed-endpoint-hosts", EMULATOR_HOSTS, *extra]
        if namespace:
            argv += ["--namespace", namespace]
        proc = AgentProcess(argv, self.workdir / f"controller-{identity}.log", port)
        self.started.append(proc)
        return proc

    def sidecar(self, name: str, config: Path, service: str, namespace: str, kubeconfig: Path,
                admin_port: int) -> AgentProcess:
        argv = ["sidecar", "--config", str(config), "--service", service, "--namespace", namespace,
                "--kubeconfig", str(kubeconfig), "--admin-port", str(admin_port)]
        proc = AgentProcess(argv, self.workdir / f"sidecar-{name}.log", admin_port)
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.started:
            proc.stop()
        # A leader that died without releasing the Lease would make the next test's controller wait a
        # whole lease duration before it may poll; tests are independent, so start each from no Lease.
        self.cluster.kubectl("delete", "lease", LEASE, "-n", SYSTEM_NS, "--ignore-not-found", check=False)


@pytest.fixture
def agents(cluster: Cluster, tmp_path: Path) -> Iterator[Agents]:
    registry = Agents(cluster, tmp_path)

    def log_tails() -> str:
        return "\n".join(f"==== {proc.log_path.name} (last 60 lines)\n" + "\n".join(proc.log().splitlines()[-60:])
                         for proc in registry.started)

    DIAGNOSTICS.append(log_tails)
    yield registry
    DIAGNOSTICS.remove(log_tails)
    registry.stop_all()  # also deletes the Lease: the next test starts from none
    if os.environ.get("KUBE_TESTS_SHOW_LOGS"):
        for proc in registry.started:
            print(f"==== {proc.log_path.name}\n{proc.log()[-5000:]}")
