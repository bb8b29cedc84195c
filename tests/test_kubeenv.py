"""The real Kubernetes test environment: apiserver, controller-manager, RBAC, CoreDNS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from tests import kubeenv
from tests.kubeenv import KubectlError, KubeEnvError, KubeTestEnv

# The session fixture, as another module or conftest would pull it in.
kube_env = kubeenv.kube_env

pytestmark = pytest.mark.kube


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _eventually(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.25)


def _exists(env: KubeTestEnv, *args: str) -> bool:
    proc = env.kubectl("get", *args, "-o", "name", "--ignore-not-found", check=True)
    return bool(proc.stdout.strip())


@pytest.fixture()
def namespace(kube_env: KubeTestEnv) -> str:
    name = _unique("kubeenv")
    kube_env.kubectl("create", "namespace", name)
    return name


def test_apiserver_is_ready(kube_env: KubeTestEnv) -> None:
    proc = kube_env.kubectl("get", "--raw", "/readyz")
    assert proc.stdout.strip() == "ok"
    version = json.loads(kube_env.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"].startswith("v1.")
    assert version["clientVersion"]["gitVersion"] == version["serverVersion"]["gitVersion"]


def test_admin_kubeconfig_and_fields(kube_env: KubeTestEnv) -> None:
    assert kube_env.server_url.startswith("https://127.0.0.1:")
    assert kube_env.ca_path.read_text().startswith("-----BEGIN CERTIFICATE-----")
    config = json.loads(kube_env.kubeconfig_path.read_text())
    assert config["clusters"][0]["cluster"]["server"] == kube_env.server_url
    assert config["users"][0]["user"]["token"] == kube_env.admin_token
    whoami = json.loads(kube_env.kubectl("auth", "whoami", "-o", "json").stdout)
    assert "system:masters" in whoami["status"]["userInfo"]["groups"]


def test_garbage_collector_deletes_dependents(kube_env: KubeTestEnv, namespace: str) -> None:
    kube_env.kubectl("create", "configmap", "owner", "-n", namespace, "--from-literal=a=b")
    owner_uid = kube_env.kubectl("get", "configmap", "owner", "-n", namespace, "-o", "jsonpath={.metadata.uid}").stdout
    assert owner_uid
    dependent = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "dependent",
            "namespace": namespace,
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner_uid}],
        },
        "data": {"c": "d"},
    }
    kube_env.kubectl("apply", "-f", "-", input=json.dumps(dependent))
    assert _exists(kube_env, "configmap", "dependent", "-n", namespace)

    kube_env.kubectl("delete", "configmap", "owner", "-n", namespace, "--cascade=background", "--wait=false")
    _eventually(
        lambda: not _exists(kube_env, "configmap", "dependent", "-n", namespace),
        30,
        "the garbage collector to delete the dependent ConfigMap",
    )


def test_namespace_deletion_removes_content(kube_env: KubeTestEnv) -> None:
    ns = _unique("kubeenv-del")
    kube_env.kubectl("create", "namespace", ns)
    kube_env.kubectl("create", "configmap", "x", "-n", ns)
    kube_env.kubectl("delete", "namespace", ns, "--wait=false")
    _eventually(lambda: not _exists(kube_env, "namespace", ns), 60, f"namespace {ns} to be deleted")


def test_service_account_token_is_denied_by_rbac(kube_env: KubeTestEnv, namespace: str, tmp_path: Path) -> None:
    kube_env.kubectl("create", "serviceaccount", "reader", "-n", namespace)
    sa_user = f"system:serviceaccount:{namespace}:reader"

    can_i = kube_env.kubectl("auth", "can-i", "list", "secrets", "-n", namespace, f"--as={sa_user}", check=False)
    assert can_i.stdout.strip() == "no"
    assert can_i.returncode != 0

    # The token itself authenticates (TokenRequest works) ...
    token = kube_env.token_for_service_account(namespace, "reader")
    assert token.count(".") == 2  # a JWT
    sa_kubeconfig = kube_env.kubeconfig_for_token(token, tmp_path / "reader.kubeconfig", namespace=namespace)
    whoami = json.loads(kube_env.kubectl("auth", "whoami", "-o", "json", kubeconfig=sa_kubeconfig).stdout)
    assert whoami["status"]["userInfo"]["username"] == sa_user

    # ... and RBAC refuses it.
    with pytest.raises(KubectlError) as denied:
        kube_env.kubectl("get", "secrets", "-n", namespace, kubeconfig=sa_kubeconfig)
    assert "forbidden" in str(denied.value).lower()

    # A Role and RoleBinding change the answer, so RBAC really is evaluated.
    kube_env.kubectl("create", "role", "secret-reader", "-n", namespace, "--verb=list", "--resource=secrets")
    kube_env.kubectl(
        "create",
        "rolebinding",
        "reader",
        "-n",
        namespace,
        "--role=secret-reader",
        f"--serviceaccount={namespace}:reader",
    )
    _eventually(
        lambda: (
            kube_env.kubectl("get", "secrets", "-n", namespace, kubeconfig=sa_kubeconfig, check=False).returncode == 0
        ),
        10,
        "the RoleBinding to take effect",
    )


def test_restart_apiserver_keeps_data(kube_env: KubeTestEnv, namespace: str) -> None:
    kube_env.kubectl("create", "configmap", "survivor", "-n", namespace)
    port = kube_env.apiserver_port
    kube_env.restart_apiserver()
    assert kube_env.apiserver_port == port
    assert kube_env.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    assert _exists(kube_env, "configmap", "survivor", "-n", namespace)


def test_apiserver_crash_and_restart(kube_env: KubeTestEnv, namespace: str) -> None:
    kube_env.kubectl("create", "configmap", "crash-survivor", "-n", namespace)
    kube_env.restart_apiserver(graceful=False)
    assert _exists(kube_env, "configmap", "crash-survivor", "-n", namespace)


@pytest.mark.parametrize("graceful", [True, False], ids=["sigterm", "sigkill"])
def test_restart_etcd_keeps_data(kube_env: KubeTestEnv, namespace: str, graceful: bool) -> None:
    kube_env.kubectl("create", "configmap", "durable", "-n", namespace)
    kube_env.restart_etcd(graceful=graceful)
    assert kube_env.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    assert _exists(kube_env, "configmap", "durable", "-n", namespace)
    # The apiserver's watches on etcd recovered: the controller-manager still acts.
    kube_env.kubectl("create", "configmap", "owner2", "-n", namespace)
    uid = kube_env.kubectl("get", "configmap", "owner2", "-n", namespace, "-o", "jsonpath={.metadata.uid}").stdout
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner2", "uid": uid}
    dependent = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "dependent2", "namespace": namespace, "ownerReferences": [ref]},
    }
    kube_env.kubectl("apply", "-f", "-", input=json.dumps(dependent))
    kube_env.kubectl("delete", "configmap", "owner2", "-n", namespace, "--wait=false")
    _eventually(
        lambda: not _exists(kube_env, "configmap", "dependent2", "-n", namespace),
        30,
        "the garbage collector to delete the dependent after the etcd restart",
    )


def _resolve(host: str, port: int, name: str, *, tcp: bool = False) -> list[str]:
    query = dns.message.make_query(name, dns.rdatatype.A)
    answer = (
        dns.query.tcp(query, host, port=port, timeout=3) if tcp else dns.query.udp(query, host, port=port, timeout=3)
    )
    if answer.rcode() != dns.rcode.NOERROR:
        return []
    return sorted(item.address for rrset in answer.answer if rrset.rdtype == dns.rdatatype.A for item in rrset)


def test_coredns_resolves_services(kube_env: KubeTestEnv, namespace: str) -> None:
    host, port = kube_env.start_coredns()
    assert host == "127.0.0.1"

    kube_env.kubectl("create", "service", "clusterip", "web", "-n", namespace, "--tcp=80:8080")
    cluster_ip = kube_env.kubectl("get", "service", "web", "-n", namespace, "-o", "jsonpath={.spec.clusterIP}").stdout
    assert cluster_ip.startswith("10.96.")
    name = f"web.{namespace}.svc.cluster.local."
    _eventually(lambda: _resolve(host, port, name) == [cluster_ip], 15, f"{name} to resolve over UDP")
    assert _resolve(host, port, name, tcp=True) == [cluster_ip]

    # A headless, selectorless Service with a hand-written EndpointSlice, the way
    # the agent publishes ModelArts instances: DNS answers with the slice's addresses.
    manifests = [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "instances", "namespace": namespace},
            "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]},
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "instances-1",
                "namespace": namespace,
                "labels": {
                    "kubernetes.io/service-name": "instances",
                    "endpointslice.kubernetes.io/managed-by": "kubeenv-test",
                },
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["192.168.205.58"], "conditions": {"ready": True}},
                {"addresses": ["192.168.205.59"], "conditions": {"ready": True}},
            ],
        },
    ]
    kube_env.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}))
    headless = f"instances.{namespace}.svc.cluster.local."
    _eventually(
        lambda: _resolve(host, port, headless) == ["192.168.205.58", "192.168.205.59"],
        15,
        f"{headless} to resolve to the EndpointSlice addresses",
    )
    # The slice, managed by someone else, was left alone by the endpointslice controllers.
    assert _exists(kube_env, "endpointslice", "instances-1", "-n", namespace)
    assert kube_env.start_coredns() == (host, port)


def test_helm_installs_a_chart(kube_env: KubeTestEnv, namespace: str, tmp_path: Path) -> None:
    assert kube_env.helm("version", "--short").stdout.startswith("v3.")
    chart = tmp_path / "tiny"
    (chart / "templates").mkdir(parents=True)
    # kubeVersion makes helm check the server's version (so the build must stamp it).
    (chart / "Chart.yaml").write_text('apiVersion: v2\nname: tiny\nversion: 0.1.0\nkubeVersion: ">=1.30.0-0"\n')
    (chart / "values.yaml").write_text("greeting: hello\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-cm\n"
        "data:\n  greeting: {{ .Values.greeting | quote }}\n"
    )
    kube_env.helm("install", "tiny", str(chart), "-n", namespace, "--set", "greeting=hi", "--wait")
    got = kube_env.kubectl("get", "configmap", "tiny-cm", "-n", namespace, "-o", "jsonpath={.data.greeting}")
    assert got.stdout == "hi"
    releases = json.loads(kube_env.helm("list", "-n", namespace, "-o", "json").stdout)
    assert [(r["name"], r["status"]) for r in releases] == [("tiny", "deployed")]
    kube_env.helm("uninstall", "tiny", "-n", namespace, "--wait")
    assert not _exists(kube_env, "configmap", "tiny-cm", "-n", namespace)


def test_startup_failure_raises_with_log_tail(tmp_path: Path) -> None:
    env = KubeTestEnv(tmp_path / "env", extra_apiserver_args=["--no-such-flag=1"], start_timeout=60)
    with pytest.raises(KubeEnvError) as failed:
        env.start()
    message = str(failed.value)
    assert "kube-apiserver exited" in message
    assert "unknown flag: --no-such-flag" in message
    assert env._etcd is not None and not env._etcd.running()  # etcd was stopped again


_CHILD = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from tests.kubeenv import KubeTestEnv
env = KubeTestEnv(sys.argv[2]).start()
env.start_coredns()
procs = [env._etcd, env._apiserver, env._controller_manager, env._coredns]
print(json.dumps([c.proc.pid for c in procs]), flush=True)
if sys.argv[3] == "exit":
    sys.exit(0)  # no stop(): the atexit hook must clean up
time.sleep(600)
"""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead but not yet reaped by its (re)parent.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_children_die_with_the_test_process(tmp_path: Path, how: str) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(Path(__file__).resolve().parent.parent), str(tmp_path / "env"), how],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        pids = json.loads(line)
        assert len(pids) == 4
        if how == "sigkill":
            child.kill()
        child.wait(60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    _eventually(lambda: not any(_pid_alive(pid) for pid in pids), 30, f"child processes {pids} to exit")
