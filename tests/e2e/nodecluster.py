"""A real single-node Kubernetes cluster, with pods, inside a private network namespace.

``NodeCluster`` extends the control plane of ``tests/kubeenv.py`` (etcd, kube-apiserver,
kube-controller-manager with every controller) with a node: containerd + runc, the kubelet,
kube-scheduler, kube-proxy, CNI bridge networking and CoreDNS. The facts behind each setting are
in ``shared/notes/real-cluster.md``; the settings that handle this machine's quirks say so.

Network safety: everything runs in one network namespace made for it (``ip netns add``) that holds
only ``lo`` and a veth pair with both ends inside (the node address), later the CNI bridge and the
pods' veths. It has no default route and no link to a real interface, CoreDNS has no upstream and
the kubelet's resolv.conf no nameserver, so nothing in it can reach an address outside this machine.
The test process moves its main thread into that namespace (``setns``) for the session, so kubectl,
helm and the tests talk to the apiserver at the node address like any client on the node.

Every process is started with the namespace already entered (not with ``ip netns exec``, whose
private mount namespace hides the kubelet's volume mounts from containerd). ``stop()`` kills the
pods' processes through their cgroups, stops every component, unmounts everything under the work
dir and deletes the namespace; ``clear_leftovers()`` does the same for what a killed earlier run
left behind, and runs before every start. The work dir is fixed (``WORK_ROOT``) so a later run can
find it.

Needs real root (not a user namespace): it mounts, creates cgroups and network namespaces.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

from tests.kubeenv import KubeEnvError, KubeTestEnv, _Component, _http_ok, _tail_file

NETNS = "modelarts-e2e"
NETNS_PATH = Path("/run/netns") / NETNS
WORK_ROOT = Path(os.environ.get("E2E_WORK_ROOT", "/var/tmp/modelarts-e2e"))
NODE_NAME = "e2e-node"
NODE_IP = "10.222.0.1"
NODE_CIDR = "10.222.0.1/24"
POD_CIDR = "10.244.0.0/24"
CLUSTER_DNS_IP = "10.96.0.10"
CLUSTER_DOMAIN = "cluster.local"
APISERVER_PORT = 6443
NODE_BINARIES = ("kubelet", "kube-scheduler", "kube-proxy")
# The kubelet's sandbox image; scripts/image/pause.sh builds it under this name (nothing is pulled).
PAUSE_IMAGE = os.environ.get("E2E_PAUSE_IMAGE", "registry.k8s.io/pause:3.10")
HOST_TOOLS = ("ip", "nsenter", "containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables", "mount")
CNI_BIN_DIR = Path(os.environ.get("E2E_CNI_BIN_DIR", "/usr/lib/cni"))
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")
CGROUP_ROOT = Path("/sys/fs/cgroup")
KUBEPODS = "kubepods"

_CLONE_NEWNET = 0x40000000


class NodeClusterError(KubeEnvError):
    """The cluster could not be set up, started or cleaned."""


def _run(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise NodeClusterError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout}")
    return proc


def missing_host_tools() -> list[str]:
    """Host commands and CNI plugins the node needs that this machine lacks."""
    missing = [tool for tool in HOST_TOOLS if shutil.which(tool) is None]
    missing += [f"{CNI_BIN_DIR}/{p}" for p in CNI_PLUGINS if not (CNI_BIN_DIR / p).exists()]
    return missing


def _setns(path: Path) -> None:
    """Move the calling thread into the network namespace at ``path``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NodeClusterError(f"setns({path}) failed: {os.strerror(err)}")
    finally:
        os.close(fd)


# --- cleaning what a run leaves behind ----------------------------------------------------------

def _mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root``, deepest first (the order to unmount them)."""
    points: list[str] = []
    prefix = str(root)
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        for line in mountinfo:
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                points.append(point)
    return sorted(set(points), key=lambda p: p.count("/"), reverse=True)


def _kubepods_cgroups() -> list[Path]:
    """Every cgroup the kubelet made (``kubepods`` subtrees), deepest first."""
    found: list[Path] = []
    if not CGROUP_ROOT.is_dir():
        return found
    for hierarchy in CGROUP_ROOT.iterdir():
        top = hierarchy / KUBEPODS
        if top.is_dir() and not top.is_symlink():
            found.extend(p for p in top.rglob("*") if p.is_dir())
            found.append(top)
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _kill_cgroup_processes() -> int:
    """SIGKILL every process in the kubelet's cgroups (the pods' containers); returns how many."""
    pids: set[int] = set()
    for group in _kubepods_cgroups():
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in (group / "cgroup.procs").read_text().split())
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


def _processes_mentioning(marker: str) -> list[int]:
    """PIDs whose command line contains ``marker`` (our components and containerd's shims)."""
    found = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        with contextlib.suppress(OSError):
            if marker.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


def clear_leftovers(work_root: Path = WORK_ROOT, *, timeout: float = 30.0) -> list[str]:
    """Remove what an earlier run (maybe SIGKILLed) left: processes, mounts, cgroups, namespace, files.

    Returns what it found, for the log. Safe to call when nothing is left.
    """
    found: list[str] = []
    deadline = time.monotonic() + timeout
    # Our components and the shims carry the work dir in their argv; containers are found by cgroup.
    while True:
        pids = _processes_mentioning(str(work_root))
        killed = _kill_cgroup_processes()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if pids or killed:
            found.append(f"killed {len(pids)} component and {killed} pod processes")
        if not pids and not killed:
            break
        if time.monotonic() > deadline:
            raise NodeClusterError(f"processes of an earlier run would not die: {pids}")
        time.sleep(0.3)
    for point in _mounts_under(work_root):
        proc = _run("umount", "-l", point, check=False)
        if proc.returncode == 0:
            found.append(f"unmounted {point}")
    for group in _kubepods_cgroups():
        with contextlib.suppress(OSError):
            group.rmdir()
            found.append(f"removed cgroup {group}")
    if NETNS_PATH.exists():
        _run("ip", "netns", "delete", NETNS, check=False)
        with contextlib.suppress(OSError):
            NETNS_PATH.unlink()
        found.append(f"deleted network namespace {NETNS}")
    if work_root.exists():
        shutil.rmtree(work_root, ignore_errors=True)
        if work_root.exists() and _mounts_under(work_root):
            raise NodeClusterError(f"{work_root} still has mounts: {_mounts_under(work_root)}")
        found.append(f"removed {work_root}")
    return found


def leftovers(work_root: Path = WORK_ROOT) -> list[str]:
    """What of a cluster is still on this machine (empty after a clean stop)."""
    left = [f"process {pid}" for pid in _processes_mentioning(str(work_root))]
    left += [f"mount {m}" for m in _mounts_under(work_root)]
    left += [f"cgroup {g}" for g in _kubepods_cgroups()]
    if NETNS_PATH.exists():
        left.append(f"netns {NETNS}")
    if work_root.exists():
        left.append(f"dir {work_root}")
    return left


# --- the cluster ----------------------------------------------------------------------------------

class NodeCluster(KubeTestEnv):
    """The control plane of KubeTestEnv plus one node, all in the private namespace ``NETNS``."""

    def __init__(self, *, images: list[Path] | None = None, start_timeout: float = 180.0) -> None:
        self.work_root = WORK_ROOT
        # The kube controllers a real cluster runs (deployments, replicasets, ...), and the default
        # admission plugins (ServiceAccount mounts the pods' tokens).
        super().__init__(self.work_root / "control-plane", controllers=("*",), disable_admission_plugins=(),
                         start_timeout=start_timeout)
        self._own_workdir = False
        self.bind_address = "0.0.0.0"
        self.advertise_address = NODE_IP
        self.endpoint_reconciler = "lease"
        self.extra_sans = [f"IP:{NODE_IP}"]
        self.images = list(images or [])
        self.node_dir = self.work_root / "node"
        self.containerd_dir = self.node_dir / "containerd"
        self.containerd_socket = self.containerd_dir / "containerd.sock"
        self.kubelet_dir = self.node_dir / "kubelet"
        self.cni_conf_dir = self.node_dir / "cni" / "net.d"
        self._node_components: list[_Component] = []
        self._host_netns_fd: int | None = None
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ public

    def start(self) -> NodeCluster:
        if os.geteuid() != 0:
            raise NodeClusterError("the real-cluster tests need root (mounts, cgroups, network namespaces)")
        missing = missing_host_tools()
        if missing:
            raise NodeClusterError(
                f"missing on this machine: {', '.join(missing)} (scripts/image/deps.sh installs them)")
        t0 = time.monotonic()
        for line in clear_leftovers(self.work_root):
            print(f"[nodecluster] left by an earlier run: {line}", flush=True)
        self.node_dir.mkdir(parents=True)
        self._make_netns()
        try:
            self.apiserver_port = APISERVER_PORT
            super().start()
            for name in NODE_BINARIES:
                if not os.access(self.binary(name), os.X_OK):
                    raise NodeClusterError(f"{self.binary(name)} is missing: scripts/testenv/build.sh builds it")
            self.timings["control plane"] = time.monotonic() - t0
            self._start_node()
            self.timings["total"] = time.monotonic() - t0
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for comp in reversed(self._node_components):
            if comp.name in ("kubelet", "kube-proxy", "kube-scheduler", "coredns"):
                with contextlib.suppress(Exception):
                    comp.stop(timeout=10)
        _kill_cgroup_processes()
        for comp in reversed(self._node_components):
            with contextlib.suppress(Exception):
                comp.stop(timeout=10)
        self._node_components.clear()
        super().stop()
        self._leave_netns()
        clear_leftovers(self.work_root)

    def node_log(self, component: str) -> Path:
        return self.log_path(component)

    def pod_logs(self, namespace: str, selector: str, tail: int = 60) -> str:
        proc = self.kubectl("logs", "-n", namespace, "-l", selector, "--all-containers", "--prefix",
                            f"--tail={tail}", check=False, timeout=30)
        return proc.stdout + proc.stderr

    # ----------------------------------------------------------------- network

    def _make_netns(self) -> None:
        _run("ip", "netns", "add", NETNS)
        ns = ("ip", "-n", NETNS)
        _run(*ns, "link", "set", "lo", "up")
        # Both ends inside: the node needs a non-loopback address that pods can route to.
        _run(*ns, "link", "add", "e2e-node", "type", "veth", "peer", "name", "e2e-peer")
        _run(*ns, "addr", "add", NODE_CIDR, "dev", "e2e-node")
        _run(*ns, "link", "set", "e2e-node", "up")
        _run(*ns, "link", "set", "e2e-peer", "up")
        for key, value in (("net.ipv4.ip_forward", "1"), ("net.bridge.bridge-nf-call-iptables", "1")):
            # Replies between pods on the bridge must pass iptables, or kube-proxy's DNAT is not undone.
            _run("nsenter", f"--net={NETNS_PATH}", "sysctl", "-qw", f"{key}={value}")
        self._host_netns_fd = os.open("/proc/self/ns/net", os.O_RDONLY)
        _setns(NETNS_PATH)
        routes = _run("ip", "route", "get", "1.1.1.1", check=False)
        if routes.returncode == 0:
            raise NodeClusterError(f"the cluster's namespace has a route out: {routes.stdout.strip()}")

    def _leave_netns(self) -> None:
        if self._host_netns_fd is None:
            return
        libc = ctypes.CDLL(None, use_errno=True)
        libc.setns(self._host_netns_fd, _CLONE_NEWNET)
        os.close(self._host_netns_fd)
        self._host_netns_fd = None

    # -------------------------------------------------------------------- node

    def _component(self, name: str, argv: list[str]) -> _Component:
        comp = _Component(name, argv, self.log_path(name))
        comp.start()
        self._node_components.append(comp)
        return comp

    def _start_node(self) -> None:
        t = time.monotonic()
        self._start_containerd()
        self.timings["containerd"] = time.monotonic() - t
        t = time.monotonic()
        self._import_images()
        self.timings["image import"] = time.monotonic() - t
        t = time.monotonic()
        self._write_cni_config()
        admin = str(self.kubeconfig_path)
        self._component("kube-scheduler", [
            str(self.binary("kube-scheduler")), f"--kubeconfig={admin}",
            f"--authentication-kubeconfig={admin}", f"--authorization-kubeconfig={admin}",
            "--authentication-skip-lookup=true", "--leader-elect=false",
            "--bind-address=127.0.0.1", "--secure-port=10259", "--profiling=false",
        ])
        self._start_kubelet()
        self._start_kube_proxy()
        self._start_coredns()
        self._wait_node_ready()
        self.timings["node ready"] = time.monotonic() - t

    def _start_containerd(self) -> None:
        state = self.containerd_dir / "state"
        config = self.containerd_dir / "config.toml"
        self.containerd_dir.mkdir(parents=True, exist_ok=True)
        config.write_text(textwrap.dedent(f"""\
            version = 2
            root = "{self.containerd_dir / 'root'}"
            state = "{state}"
            [grpc]
              address = "{self.containerd_socket}"
            [ttrpc]
              address = "{self.containerd_socket}.ttrpc"
            [debug]
              address = ""
            [metrics]
              address = ""
            [plugins."io.containerd.grpc.v1.cri"]
              sandbox_image = "{PAUSE_IMAGE}"
              # root here lacks CAP_SYS_RESOURCE: never lower a process's oom_score_adj
              restrict_oom_score_adj = true
              disable_apparmor = true
              stream_server_address = "127.0.0.1"
              stream_server_port = "0"
              # pods' network namespaces under the state dir, not /run/netns, so cleanup finds them
              netns_mounts_under_state_dir = true
              [plugins."io.containerd.grpc.v1.cri".containerd]
                snapshotter = "overlayfs"
                default_runtime_name = "runc"
                [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
                  runtime_type = "io.containerd.runc.v2"
                  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
                    # cgroup v1 hierarchies (hybrid mode): runc with the cgroupfs driver
                    SystemdCgroup = false
              [plugins."io.containerd.grpc.v1.cri".cni]
                bin_dir = "{CNI_BIN_DIR}"
                conf_dir = "{self.cni_conf_dir}"
            """))
        comp = self._component("containerd", ["containerd", "--config", str(config), "--log-level", "warn"])
        self._poll("containerd", comp, lambda: self._ctr("version", check=False).returncode == 0)

    def _ctr(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return _run("ctr", "--address", str(self.containerd_socket), "--namespace", "k8s.io", *args,
                    check=check, timeout=timeout)

    def _import_images(self) -> None:
        for archive in self.images:
            if not archive.exists():
                raise NodeClusterError(f"image archive {archive} is missing (scripts/image/all.sh builds it)")
            self._ctr("images", "import", "--no-unpack", str(archive))
        listed = self._ctr("images", "list", "--quiet").stdout
        if PAUSE_IMAGE not in listed.split() and f"docker.io/{PAUSE_IMAGE}" not in listed.split():
            raise NodeClusterError(f"the sandbox image {PAUSE_IMAGE} is not in containerd after import:\n{listed}")

    def images_listed(self) -> list[str]:
        return self._ctr("images", "list", "--quiet").stdout.split()

    def _write_cni_config(self) -> None:
        self.cni_conf_dir.mkdir(parents=True, exist_ok=True)
        conflist = {
            "cniVersion": "1.0.0",
            "name": "e2e",
            "plugins": [
                {
                    "type": "bridge", "bridge": "cni0", "isGateway": True, "hairpinMode": True,
                    # no masquerade: there is nothing to masquerade to
                    "ipMasq": False,
                    "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_CIDR}]],
                             "routes": [{"dst": "0.0.0.0/0"}],
                             "dataDir": str(self.node_dir / "cni" / "ipam")},
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        (self.cni_conf_dir / "10-e2e.conflist").write_text(json.dumps(conflist, indent=2))

    def _start_kubelet(self) -> None:
        self.kubelet_dir.mkdir(parents=True, exist_ok=True)
        resolv = self.node_dir / "resolv.conf"
        resolv.write_text(f"# no upstream: nothing may leave the namespace\nsearch {CLUSTER_DOMAIN}\n")
        pki = self.pki_dir
        config = self.node_dir / "kubelet.yaml"
        config.write_text(textwrap.dedent(f"""\
            apiVersion: kubelet.config.k8s.io/v1beta1
            kind: KubeletConfiguration
            address: {NODE_IP}
            port: 10250
            readOnlyPort: 0
            healthzBindAddress: 127.0.0.1
            healthzPort: 10248
            authentication:
              anonymous: {{enabled: false}}
              webhook: {{enabled: false}}
              x509: {{clientCAFile: {pki / 'ca.crt'}}}
            authorization: {{mode: AlwaysAllow}}
            containerRuntimeEndpoint: unix://{self.containerd_socket}
            cgroupDriver: cgroupfs
            failCgroupV1: false
            failSwapOn: false
            oomScoreAdj: 0
            clusterDNS: [{CLUSTER_DNS_IP}]
            clusterDomain: {CLUSTER_DOMAIN}
            resolvConf: {resolv}
            staticPodPath: ""
            # ConfigMap and Secret volumes follow their objects within seconds (default: a minute)
            syncFrequency: 5s
            serializeImagePulls: false
            imageGCHighThresholdPercent: 100
            imageGCLowThresholdPercent: 99
            evictionHard: {{memory.available: 50Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}}
            maxPods: 60
            shutdownGracePeriod: 0s
            protectKernelDefaults: false
            rotateCertificates: false
            serverTLSBootstrap: false
            """))
        self._component("kubelet", [
            str(self.binary("kubelet")), f"--config={config}", f"--kubeconfig={self.kubeconfig_path}",
            f"--root-dir={self.kubelet_dir}", f"--cert-dir={self.kubelet_dir / 'pki'}",
            f"--hostname-override={NODE_NAME}", f"--node-ip={NODE_IP}", "--v=1",
        ])

    def _kubelet_client_cert(self) -> None:
        """A client certificate the apiserver shows the kubelet (logs, exec), signed by the cluster CA."""
        self._openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                      "-keyout", "kubelet-client.key", "-out", "kubelet-client.csr",
                      "-subj", "/O=system:masters/CN=kube-apiserver-kubelet-client")
        (self.pki_dir / "kubelet-client.ext").write_text("extendedKeyUsage=clientAuth\n")
        self._openssl("x509", "-req", "-in", "kubelet-client.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                      "-CAcreateserial", "-out", "kubelet-client.crt", "-days", "30",
                      "-extfile", "kubelet-client.ext")

    def _apiserver_component(self) -> _Component:
        comp = super()._apiserver_component()
        comp.argv += [
            f"--kubelet-client-certificate={self.pki_dir / 'kubelet-client.crt'}",
            f"--kubelet-client-key={self.pki_dir / 'kubelet-client.key'}",
            # The node's name resolves nowhere (no DNS upstream): reach the kubelet at its address.
            "--kubelet-preferred-address-types=InternalIP",
        ]
        return comp

    def _write_pki(self) -> None:
        super()._write_pki()
        self._kubelet_client_cert()

    def _start_kube_proxy(self) -> None:
        config = self.node_dir / "kube-proxy.yaml"
        config.write_text(textwrap.dedent(f"""\
            apiVersion: kubeproxy.config.k8s.io/v1alpha1
            kind: KubeProxyConfiguration
            clientConnection: {{kubeconfig: {self.kubeconfig_path}}}
            mode: iptables
            clusterCIDR: {POD_CIDR}
            hostnameOverride: {NODE_NAME}
            bindAddress: 0.0.0.0
            healthzBindAddress: 127.0.0.1:10256
            metricsBindAddress: 127.0.0.1:10249
            # conntrack sysctls are read-only outside the first namespace: leave them alone
            conntrack: {{maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}}
            """))
        comp = self._component("kube-proxy", [str(self.binary("kube-proxy")), f"--config={config}", "--v=1"])
        self._poll("kube-proxy", comp, lambda: _http_ok("http://127.0.0.1:10256/healthz"))

    def _start_coredns(self) -> None:
        """CoreDNS as a process on the node, behind a selectorless kube-dns Service (no upstream)."""
        corefile = self.node_dir / "Corefile"
        corefile.write_text(textwrap.dedent(f"""\
            .:53 {{
                bind {NODE_IP}
                errors
                ready 127.0.0.1:8181
                kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
                    kubeconfig {self.kubeconfig_path}
                    pods insecure
                    fallthrough in-addr.arpa ip6.arpa
                    ttl 5
                }}
            }}
            """))
        comp = self._component("coredns", [str(self.binary("coredns")), "-conf", str(corefile)])
        self._poll("coredns", comp, lambda: _http_ok("http://127.0.0.1:8181/ready"))
        manifest = textwrap.dedent(f"""\
            apiVersion: v1
            kind: Service
            metadata: {{name: kube-dns, namespace: kube-system, labels: {{k8s-app: kube-dns}}}}
            spec:
              clusterIP: {CLUSTER_DNS_IP}
              ports:
                - {{name: dns, port: 53, protocol: UDP, targetPort: 53}}
                - {{name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}}
            ---
            apiVersion: discovery.k8s.io/v1
            kind: EndpointSlice
            metadata:
              name: kube-dns-node
              namespace: kube-system
              labels: {{kubernetes.io/service-name: kube-dns, endpointslice.kubernetes.io/managed-by: e2e-fixture}}
            addressType: IPv4
            endpoints:
              - addresses: [{NODE_IP}]
                conditions: {{ready: true}}
            ports:
              - {{name: dns, port: 53, protocol: UDP}}
              - {{name: dns-tcp, port: 53, protocol: TCP}}
            """)
        self.kubectl("apply", "-f", "-", input=manifest)

    def _wait_node_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last = ""
        while time.monotonic() < deadline:
            for comp in self._node_components:
                comp.check_alive()
            proc = self.kubectl("get", "node", NODE_NAME, "-o",
                                "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False)
            last = proc.stdout.strip() or proc.stderr.strip()
            if last == "True":
                sa = self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False)
                if sa.returncode == 0:
                    return
            time.sleep(0.5)
        raise NodeClusterError(f"node {NODE_NAME} not Ready in {self.start_timeout}s (last: {last}); kubelet log:\n"
                               f"{_tail_file(self.log_path('kubelet'))}")


@contextlib.contextmanager
def running_cluster(images: list[Path]) -> Iterator[NodeCluster]:
    cluster = NodeCluster(images=images)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.e2e.nodecluster up|clean|leftovers``: a cluster by hand (debugging, and the
    test that a killed run is cleared). ``up`` stays in the foreground until SIGTERM/SIGINT."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.e2e.nodecluster")
    parser.add_argument("command", choices=("up", "clean", "leftovers"))
    parser.add_argument("--image", action="append", type=Path, default=[], help="image archive to import")
    parser.add_argument("--ready-file", type=Path, help="written once the node is Ready (up)")
    args = parser.parse_args(argv)
    if args.command == "clean":
        for line in clear_leftovers():
            print(line)
        return 0
    if args.command == "leftovers":
        left = leftovers()
        print("\n".join(left) or "nothing left")
        return 1 if left else 0
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with running_cluster(args.image) as cluster:
        print(json.dumps({"kubeconfig": str(cluster.kubeconfig_path), "timings": cluster.timings}), flush=True)
        if args.ready_file:
            args.ready_file.write_text(str(cluster.kubeconfig_path))
        while not stop:
            time.sleep(0.5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
