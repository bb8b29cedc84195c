"""A real Kubernetes control plane on loopback for tests (the envtest approach).

``KubeTestEnv`` starts the binaries that ``scripts/testenv/build.sh`` builds from
the Go module proxy: etcd, kube-apiserver (secure serving, RBAC, token auth,
service-account tokens) and kube-controller-manager (garbage collector,
namespace deletion, default service accounts), all on 127.0.0.1 free ports, and
CoreDNS on demand. Nothing is faked: kubectl and helm are the real ones too.

Usage::

    env = KubeTestEnv()
    env.start()                      # builds the binaries first if needed
    try:
        env.kubectl("create", "namespace", "demo")
        token = env.token_for_service_account("demo", "default")
        env.kubeconfig_for_token(token, tmp / "sa.kubeconfig")
        host, port = env.start_coredns()
    finally:
        env.stop()

or, in pytest, the session-scoped ``kube_env`` fixture defined at the end of this
module (import it into a conftest: ``from kubeenv import kube_env``).

Environment variables:

- ``MODELARTS_AGENT_CACHE``: cache root that build.sh builds into (default
  ``<repo>/.cache``); the binaries are in ``$MODELARTS_AGENT_CACHE/testenv/bin``.
- ``KUBEENV_BIN_DIR``: use prebuilt binaries from this folder; build.sh is not run.
- ``KUBEENV_KEEP=1``: keep the work dir (certs, data, logs) of an env that made
  its own temporary dir.

Each component logs to ``<workdir>/logs/<component>.log``; a component that fails
to start raises ``KubeEnvError`` with the tail of its log.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

import pytest

from tests.ports import free_port as free_port  # re-exported for the kube tests

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO_ROOT / "scripts" / "testenv" / "build.sh"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl", "coredns", "helm")

SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"

# garbagecollector: ownerReference cascading deletion; namespace: deleting a
# namespace deletes its content; serviceaccount: the "default" service account
# in every namespace; endpointslice/endpointslicemirroring: what a real cluster
# runs next to Services (they leave slices with a foreign managed-by alone).
# Controllers that act on Pods/Nodes (deployment, replicaset, ...) are left out:
# there is no scheduler or kubelet, so their pods would only pile up.
DEFAULT_CONTROLLERS = (
    "garbagecollector",
    "namespace",
    "serviceaccount",
    "endpointslice",
    "endpointslicemirroring",
)

# ServiceAccount admission rejects pods in a namespace until its "default"
# service account exists, which races with namespace creation in tests (the
# serviceaccount controller creates it a moment later). envtest disables it for
# the same reason. Nothing here runs pods, so nothing else changes.
DEFAULT_DISABLED_ADMISSION_PLUGINS = ("ServiceAccount",)


class KubeEnvError(RuntimeError):
    """A component of the test environment failed to build, start or answer."""


class KubectlError(subprocess.CalledProcessError):
    """A kubectl or helm call failed; str() includes its stderr."""

    def __str__(self) -> str:
        err = self.stderr if isinstance(self.stderr, str) else ""
        return f"{super().__str__()}\nstderr:\n{err.strip()}"


def default_bin_dir() -> Path:
    """Where build.sh puts the binaries (or ``KUBEENV_BIN_DIR`` when set)."""
    override = os.environ.get("KUBEENV_BIN_DIR")
    if override:
        return Path(override)
    cache = os.environ.get("MODELARTS_AGENT_CACHE") or str(REPO_ROOT / ".cache")
    return Path(cache) / "testenv" / "bin"


def ensure_binaries(bin_dir: Path | None = None) -> Path:
    """Return the folder with the test binaries, running build.sh when needed.

    build.sh is idempotent and returns at once when its stamp matches, so it is
    always run (unless ``KUBEENV_BIN_DIR`` points at prebuilt binaries); a cold
    build takes many minutes, so CI should run it before pytest.
    """
    target = bin_dir or default_bin_dir()
    if bin_dir is None and not os.environ.get("KUBEENV_BIN_DIR"):
        proc = subprocess.run(
            ["bash", str(BUILD_SCRIPT)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise KubeEnvError(
                f"{BUILD_SCRIPT} failed with exit code {proc.returncode}:\n{_tail_text(proc.stdout + proc.stderr)}"
            )
    missing = [b for b in BINARIES if not os.access(target / b, os.X_OK)]
    if missing:
        raise KubeEnvError(f"missing test binaries in {target}: {', '.join(missing)}")
    return target




def _tail_text(text: str, lines: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _tail_file(path: Path, lines: int = 40) -> str:
    try:
        data = path.read_bytes()[-20000:]
    except OSError as exc:
        return f"(no log: {exc})"
    return _tail_text(data.decode("utf-8", "replace"), lines)


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """preexec_fn: have the kernel SIGKILL the child when the test process dies.

    A safety net for a test process killed with SIGKILL, where neither stop()
    nor atexit runs. (The signal follows the thread that forked the child, so
    start environments from the main thread.)
    """
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class _Component:
    """One child process with its argv and log file."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None):
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        if self.running():
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log.write(f"\n==== {time.strftime('%H:%M:%S')} starting: {' '.join(self.argv)}\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise KubeEnvError(
                f"{self.name} exited with code {self.proc.returncode}; "
                f"last lines of {self.log_path}:\n{_tail_file(self.log_path)}"
            )

    def stop(self, timeout: float = 20.0, *, graceful: bool = True) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None


_LIVE_ENVS: set[KubeTestEnv] = set()
_LIVE_LOCK = threading.Lock()


@atexit.register
def _stop_all_envs() -> None:
    with _LIVE_LOCK:
        envs = list(_LIVE_ENVS)
    for env in envs:
        with contextlib.suppress(Exception):
            env.stop()


class KubeTestEnv:
    """etcd + kube-apiserver + kube-controller-manager (+ CoreDNS) on 127.0.0.1."""

    def __init__(
        self,
        workdir: Path | str | None = None,
        *,
        bin_dir: Path | str | None = None,
        controllers: Sequence[str] = DEFAULT_CONTROLLERS,
        disable_admission_plugins: Sequence[str] = DEFAULT_DISABLED_ADMISSION_PLUGINS,
        extra_apiserver_args: Sequence[str] = (),
        start_timeout: float = 120.0,
    ) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="kubeenv-")) if workdir is None else Path(workdir)
        self._bin_dir_arg = Path(bin_dir) if bin_dir is not None else None
        self.bin_dir = self._bin_dir_arg or default_bin_dir()
        self.controllers = tuple(controllers)
        self.disable_admission_plugins = tuple(disable_admission_plugins)
        self.extra_apiserver_args = tuple(extra_apiserver_args)
        self.start_timeout = start_timeout
        # Where the apiserver listens and what it advertises: loopback here; a cluster with a node
        # (tests/e2e/nodecluster.py) uses the node's address, which pods reach through the
        # `kubernetes` Service, and keeps the endpoint reconciler so that Service has endpoints.
        self.bind_address = "127.0.0.1"
        self.advertise_address = "127.0.0.1"
        self.endpoint_reconciler = "none"
        self.extra_sans: list[str] = []

        self.pki_dir = self.workdir / "pki"
        self.log_dir = self.workdir / "logs"
        self.etcd_data_dir = self.workdir / "etcd-data"
        self.ca_path = self.pki_dir / "ca.crt"
        self.kubeconfig_path = self.workdir / "admin.kubeconfig"
        self.admin_token = secrets.token_hex(24)

        self.etcd_client_port = 0
        self.etcd_peer_port = 0
        self.apiserver_port = 0
        self.controller_manager_port = 0
        self.coredns_address: tuple[str, int] | None = None
        self.coredns_zone: str | None = None

        self._etcd: _Component | None = None
        self._apiserver: _Component | None = None
        self._controller_manager: _Component | None = None
        self._coredns: _Component | None = None
        self._coredns_ready_port = 0
        self._started = False

    # ------------------------------------------------------------------ public

    @property
    def server_url(self) -> str:
        return f"https://{self.advertise_address}:{self.apiserver_port}"

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.etcd_client_port}"

    def binary(self, name: str) -> Path:
        return self.bin_dir / name

    def log_path(self, component: str) -> Path:
        """Log file of a component: etcd, kube-apiserver, kube-controller-manager, coredns."""
        return self.log_dir / f"{component}.log"

    def start(self) -> KubeTestEnv:
        if self._started:
            return self
        self.bin_dir = ensure_binaries(self._bin_dir_arg)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        with _LIVE_LOCK:
            _LIVE_ENVS.add(self)
        self._started = True
        try:
            self._write_pki()
            self.etcd_client_port = free_port()
            self.etcd_peer_port = free_port()
            self.apiserver_port = self.apiserver_port or free_port()
            self.controller_manager_port = free_port()
            self._write_admin_kubeconfig()

            self._etcd = self._etcd_component()
            self._etcd.start()
            self._wait_etcd()

            self._apiserver = self._apiserver_component()
            self._apiserver.start()
            self.wait_ready()

            self._controller_manager = self._controller_manager_component()
            self._controller_manager.start()
            self._wait_controller_manager()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every child process (CoreDNS, controller-manager, apiserver, etcd)."""
        for comp in (self._coredns, self._controller_manager, self._apiserver, self._etcd):
            if comp is not None:
                with contextlib.suppress(Exception):
                    comp.stop()
        self.coredns_address = None
        self._started = False
        with _LIVE_LOCK:
            _LIVE_ENVS.discard(self)
        if self._own_workdir and os.environ.get("KUBEENV_KEEP") != "1":
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> KubeTestEnv:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Poll the apiserver's /readyz until it answers 200 "ok"."""
        deadline = time.monotonic() + (timeout or self.start_timeout)
        ctx = ssl.create_default_context(cafile=str(self.ca_path))
        last = "no answer yet"
        while True:
            if self._apiserver is not None:
                self._apiserver.check_alive()
            req = urllib.request.Request(
                f"{self.server_url}/readyz", headers={"Authorization": f"Bearer {self.admin_token}"}
            )
            try:
                with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
                    body = resp.read().decode("utf-8", "replace")
                    if resp.status == 200 and body.strip() == "ok":
                        return
                    last = f"HTTP {resp.status}: {body[:300]}"
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}: {exc.read().decode('utf-8', 'replace')[-1500:]}"
            except (OSError, ssl.SSLError) as exc:
                last = repr(exc)
            if time.monotonic() > deadline:
                raise KubeEnvError(
                    f"kube-apiserver at {self.server_url} not ready: {last}\n"
                    f"last lines of {self.log_path('kube-apiserver')}:\n"
                    f"{_tail_file(self.log_path('kube-apiserver'))}"
                )
            time.sleep(0.25)

    def restart_apiserver(self, *, graceful: bool = True) -> None:
        """Stop and start kube-apiserver only (same port, same etcd, same certs).

        ``graceful=False`` kills it with SIGKILL (a crash) instead of SIGTERM.
        """
        assert self._apiserver is not None, "env not started"
        self._apiserver.stop(graceful=graceful)
        self._apiserver.start()
        self.wait_ready()

    def restart_etcd(self, *, graceful: bool = True, down_for: float = 0.0) -> None:
        """Stop and start etcd only (same data dir and ports), then wait for the apiserver.

        A graceful stop takes about 7s: etcd waits that long for the apiserver's
        open watch streams. ``graceful=False`` kills it with SIGKILL (a crash).
        ``down_for`` keeps it stopped that many seconds (an outage, not just a restart).
        """
        assert self._etcd is not None, "env not started"
        self._etcd.stop(graceful=graceful)
        time.sleep(down_for)
        self._etcd.start()
        self._wait_etcd()
        self.wait_ready()

    def kubectl(
        self,
        *args: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = 60.0,
        kubeconfig: Path | str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl with the admin kubeconfig (or ``kubeconfig``)."""
        argv = [
            str(self.binary("kubectl")),
            f"--kubeconfig={kubeconfig or self.kubeconfig_path}",
            f"--cache-dir={self.workdir / 'kubectl-cache'}",
            *args,
        ]
        return self._run(argv, check=check, input=input, timeout=timeout)

    def helm(
        self,
        *args: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = 120.0,
        kubeconfig: Path | str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run the built helm against this cluster; helm's own state stays in the work dir."""
        home = self.workdir / "helm"
        env = {
            **os.environ,
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }
        argv = [str(self.binary("helm")), f"--kubeconfig={kubeconfig or self.kubeconfig_path}", *args]
        return self._run(argv, check=check, input=input, timeout=timeout, env=env)

    def token_for_service_account(self, namespace: str, name: str, *, duration: str = "1h") -> str:
        """A bound token for a service account, through the TokenRequest API."""
        proc = self.kubectl("create", "token", name, "-n", namespace, f"--duration={duration}")
        return proc.stdout.strip()

    def kubeconfig_for_token(self, token: str, path: Path | str, *, namespace: str | None = None) -> Path:
        """Write a kubeconfig for this cluster that authenticates with ``token``."""
        out = Path(path)
        context: dict[str, str] = {"cluster": "kubeenv", "user": "kubeenv-user"}
        if namespace:
            context["namespace"] = namespace
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "kubeenv",
                    "cluster": {
                        "server": self.server_url,
                        "certificate-authority-data": base64.b64encode(self.ca_path.read_bytes()).decode(),
                    },
                }
            ],
            "users": [{"name": "kubeenv-user", "user": {"token": token}}],
            "contexts": [{"name": "kubeenv", "context": context}],
            "current-context": "kubeenv",
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(config, indent=2) + "\n")
        tmp.chmod(0o600)
        tmp.replace(out)
        return out

    def start_coredns(self, zone: str = "cluster.local") -> tuple[str, int]:
        """Run CoreDNS's kubernetes plugin for ``zone`` against this apiserver.

        Serves UDP and TCP on 127.0.0.1 at the returned port. One CoreDNS per env:
        a second call with the same zone returns the running one.
        """
        if self._coredns is not None and self._coredns.running() and self.coredns_address:
            if zone != self.coredns_zone:
                raise KubeEnvError(f"CoreDNS already runs for zone {self.coredns_zone!r}")
            return self.coredns_address
        port = free_port(udp_too=True)
        self._coredns_ready_port = free_port()
        corefile = self.workdir / "Corefile"
        corefile.write_text(
            f""".:{port} {{
    bind 127.0.0.1
    errors
    log
    ready 127.0.0.1:{self._coredns_ready_port}
    kubernetes {zone} in-addr.arpa ip6.arpa {{
        kubeconfig {self.kubeconfig_path}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
}}
"""
        )
        self._coredns = _Component(
            "coredns",
            [str(self.binary("coredns")), "-conf", str(corefile)],
            self.log_path("coredns"),
        )
        self._coredns.start()
        try:
            self._poll(
                "coredns",
                self._coredns,
                lambda: _http_ok(f"http://127.0.0.1:{self._coredns_ready_port}/ready"),
            )
        except BaseException:
            self._coredns.stop()
            raise
        self.coredns_zone = zone
        self.coredns_address = ("127.0.0.1", port)
        return self.coredns_address

    def stop_coredns(self) -> None:
        if self._coredns is not None:
            self._coredns.stop()
        self.coredns_address = None
        self.coredns_zone = None

    # ----------------------------------------------------------------- private

    def _run(
        self,
        argv: list[str],
        *,
        check: bool,
        input: str | None,
        timeout: float,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=env,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise KubectlError(proc.returncode, argv, proc.stdout, proc.stderr)
        return proc

    def _openssl(self, *args: str) -> None:
        proc = subprocess.run(["openssl", *args], cwd=self.pki_dir, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise KubeEnvError(f"openssl {' '.join(args)} failed:\n{proc.stderr}")

    def _write_pki(self) -> None:
        """CA, apiserver serving cert and the service-account signing key pair."""
        if shutil.which("openssl") is None:
            raise KubeEnvError("the openssl command is needed to make the test certificates")
        self.pki_dir.mkdir(parents=True, exist_ok=True)
        self._openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "ca.key", "-out", "ca.crt", "-days", "3650", "-subj", "/CN=kubeenv-ca",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
        sans = [
            "IP:127.0.0.1",
            "IP:::1",
            f"IP:{KUBERNETES_SERVICE_IP}",
            "DNS:localhost",
            "DNS:kubernetes",
            "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster.local",
            *self.extra_sans,
        ]
        (self.pki_dir / "apiserver.ext").write_text(
            f"subjectAltName={','.join(sans)}\n"
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\n"
        )
        self._openssl(
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "apiserver.key", "-out", "apiserver.csr", "-subj", "/CN=kube-apiserver",
        )  # fmt: skip
        self._openssl(
            "x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "apiserver.crt", "-days", "3650", "-extfile", "apiserver.ext",
        )  # fmt: skip
        self._openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "sa.key")
        self._openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub")
        # token,user,uid,"groups"
        tokens = self.pki_dir / "tokens.csv"
        tokens.write_text(f'{self.admin_token},kubeenv-admin,kubeenv-admin,"system:masters"\n')
        for p in self.pki_dir.iterdir():
            p.chmod(0o600)

    def _write_admin_kubeconfig(self) -> None:
        self.kubeconfig_for_token(self.admin_token, self.kubeconfig_path)

    def _etcd_component(self) -> _Component:
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        return _Component(
            "etcd",
            [
                str(self.binary("etcd")),
                "--name=kubeenv",
                f"--data-dir={self.etcd_data_dir}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=kubeenv={peer}",
                "--initial-cluster-state=new",
                # Test data only: skip fsync, it makes every write ~10x faster.
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
            self.log_path("etcd"),
        )

    def _apiserver_component(self) -> _Component:
        pki = self.pki_dir
        args = [
            str(self.binary("kube-apiserver")),
            f"--etcd-servers={self.etcd_url}",
            f"--bind-address={self.bind_address}",
            f"--advertise-address={self.advertise_address}",
            f"--secure-port={self.apiserver_port}",
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--token-auth-file={pki / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            # Without a node no pod can use the "kubernetes" Service, and its Endpoints
            # would hold the loopback address, which validation refuses.
            f"--endpoint-reconciler-type={self.endpoint_reconciler}",
            "--allow-privileged=true",
            "--profiling=false",
            # On SIGTERM, close open watches (controller-manager, CoreDNS, tests'
            # informers) within 3s; without it a graceful stop hangs until the
            # 60s request timeout while they stay open.
            "--shutdown-watch-termination-grace-period=3s",
        ]
        if self.disable_admission_plugins:
            args.append(f"--disable-admission-plugins={','.join(self.disable_admission_plugins)}")
        args.extend(self.extra_apiserver_args)
        return _Component("kube-apiserver", args, self.log_path("kube-apiserver"))

    def _controller_manager_component(self) -> _Component:
        kcm_dir = self.workdir / "kube-controller-manager"
        kcm_dir.mkdir(exist_ok=True)
        kubeconfig = str(self.kubeconfig_path)
        return _Component(
            "kube-controller-manager",
            [
                str(self.binary("kube-controller-manager")),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                # Its own /healthz needs no client-certificate front proxy; skip
                # reading the (empty) requestheader CA from the apiserver.
                "--authentication-skip-lookup=true",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.controller_manager_port}",
                f"--cert-dir={kcm_dir}",
                f"--controllers={','.join(self.controllers)}",
                "--leader-elect=false",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                f"--root-ca-file={self.ca_path}",
                "--profiling=false",
            ],
            self.log_path("kube-controller-manager"),
        )

    def _poll(self, what: str, comp: _Component, ok: Callable[[], bool], timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.start_timeout)
        while True:
            comp.check_alive()
            if ok():
                return
            if time.monotonic() > deadline:
                raise KubeEnvError(
                    f"{what} did not become ready in time; last lines of {comp.log_path}:\n{_tail_file(comp.log_path)}"
                )
            time.sleep(0.2)

    def _wait_etcd(self) -> None:
        assert self._etcd is not None
        self._poll("etcd", self._etcd, lambda: _http_ok(f"{self.etcd_url}/health", expect='"health":"true"'))

    def _wait_controller_manager(self) -> None:
        assert self._controller_manager is not None
        ctx = ssl.create_default_context()
        # Its serving certificate is self-signed (in --cert-dir); only liveness is checked here.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        url = f"https://127.0.0.1:{self.controller_manager_port}/healthz"
        self._poll("kube-controller-manager", self._controller_manager, lambda: _http_ok(url, context=ctx))


def _http_ok(url: str, *, expect: str | None = None, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3, context=context) as resp:
            body = resp.read().decode("utf-8", "replace")
            return resp.status == 200 and (expect is None or expect in body.replace(" ", ""))
    except (OSError, ssl.SSLError):
        return False


@pytest.fixture(scope="session")
def kube_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeTestEnv]:
    """A running KubeTestEnv shared by the whole test session."""
    env = KubeTestEnv(tmp_path_factory.mktemp("kubeenv"))
    env.start()
    try:
        yield env
    finally:
        env.stop()
