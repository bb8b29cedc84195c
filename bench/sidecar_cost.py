"""Cost per pod: `modelarts-agent sidecar` (and the Envoy it feeds) on a real kube-apiserver.

For 1 and 10 followed Services, each case in its own namespace with the documented sidecar RBAC
(manifests/rbac/sidecar.yaml, the sidecar authenticates as that ServiceAccount):

1. the EndpointSlices exist first (3 addresses per Service, written by the benchmark as the
   controller would); a real Envoy (the injected one's flags: file mode, no --concurrency) is up
   and waits for its first config;
2. the sidecar process starts; measured from just before its exec to (a) the first Envoy file that
   carries an endpoint and (b) the moment Envoy's admin /clusters shows the hosts of every Service;
3. idle: RSS, CPU, and the apiserver requests made as the sidecar's ServiceAccount (audit log), the
   open WATCH count (apiserver_longrunning_requests);
4. churn: one Service's slice changes every second (an address replaced); the same figures, plus
   the time from each change to Envoy showing it.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests
import yaml

from bench import kube_bench as kb
from bench.env import REPO, envoy_binary

SA_USER = "system:serviceaccount:{ns}:modelarts-sidecar"
ADDRESS_BASE = "10.30"  # private, never connected to (Envoy's clusters are only read from its admin API)
SLICE_ENDPOINTS = 3
# What the image's environment sets for every agent process (Dockerfile): the sidecar runs as it would there.
IMAGE_ENV = {"MALLOC_ARENA_MAX": "2"}


def _free_port() -> int:
    from tests.kubeenv import free_port

    return free_port()


def _slice(namespace: str, service: str, generation: int, index: int) -> dict[str, Any]:
    addresses = [f"{ADDRESS_BASE}.{index}.{(generation * SLICE_ENDPOINTS + k) % 250 + 1}"
                 for k in range(SLICE_ENDPOINTS)]
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": f"{service}-bench", "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": service,
                                    "endpointslice.kubernetes.io/managed-by": "modelarts-agent"}},
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in addresses]}


def _namespace_rbac(env: Any, namespace: str) -> None:
    docs = [d for d in yaml.safe_load_all((kb.RBAC / "sidecar.yaml").read_text()) if d]
    for doc in docs:
        doc["metadata"]["namespace"] = namespace
        for subject in doc.get("subjects") or []:
            subject["namespace"] = namespace
    env.kubectl("create", "namespace", namespace)
    env.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))


def _config(workdir: Path, services: list[str]) -> tuple[Path, int, dict[str, int]]:
    envoy_admin = _free_port()
    listen = {name: _free_port() for name in services}
    path = workdir / "agent.yaml"
    path.write_text(yaml.safe_dump({
        # Only `render bootstrap` reads these two; the sidecar has no ModelArts client.
        "modelarts": {"iam_url": "http://unused.invalid", "modelarts_url": "http://unused.invalid",
                      "project_id": "unused"},
        "auth": {"mode": "token"},
        "services": [{"name": n, "service_id": n, "listen_port": listen[n]} for n in services],
        "discovery": {"allowed_cidrs": [f"{ADDRESS_BASE}.0.0/16"]},
        "envoy": {"output_dir": str(workdir / "envoy"), "admin_port": envoy_admin},
        "admin": {"port": 0},
    }))
    return path, envoy_admin, listen


class EnvoyProc:
    def __init__(self, bootstrap: Path, admin_port: int, log: Path) -> None:
        # The flags the injector gives the sidecar Envoy (agent/inject/containers.py): no --concurrency.
        self.proc = subprocess.Popen([envoy_binary(), "-c", str(bootstrap), "--disable-hot-restart",
                                      "--log-level", "warning", "--log-path", str(log)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.admin_port = admin_port
        kb.wait_until(lambda: self._get("/ready").strip() == "LIVE", 30, "Envoy /ready", 0.1)

    def _get(self, path: str) -> str:
        if self.proc.poll() is not None:
            raise RuntimeError(f"envoy exited with {self.proc.returncode}")
        return requests.get(f"http://127.0.0.1:{self.admin_port}{path}", timeout=2).text

    def hosts(self) -> dict[str, set[str]]:
        data = json.loads(self._get("/clusters?format=json"))
        return {c["name"]: {h["address"]["socket_address"]["address"] for h in c.get("host_statuses", [])}
                for c in data.get("cluster_statuses", [])}

    def stop(self) -> None:
        kb.stop_process(self.proc, 10)


def _first_file_with(output_dir: Path, needle: bytes) -> bool:
    for path in output_dir.rglob("*.json"):
        try:
            if needle in path.read_bytes():
                return True
        except OSError:
            continue
    return False


def start_phases(log_text: str, started_epoch: float, services: int) -> dict[str, float | None]:
    """Where a start's time went, from the sidecar's own JSON log (seconds after its exec): imports and
    set-up until the admin endpoint listens, each followed Service's first list, the first publication
    that holds every Service (each first list moves the snapshot version by one, so that publication's
    version is at least the number of Services). The log's timestamps have millisecond resolution."""
    import datetime as dt

    admin = first = last = published = None
    listed: set[str] = set()
    for line in log_text.splitlines():
        try:
            entry = json.loads(line)
            at = dt.datetime.fromisoformat(str(entry["ts"]).replace("Z", "+00:00")).timestamp() - started_epoch
        except (ValueError, KeyError, TypeError):
            continue
        message = entry.get("msg")
        if message == "admin endpoint listening" and admin is None:
            admin = at
        elif message == "endpoints changed" and entry.get("service") not in listed:
            listed.add(str(entry.get("service")))
            first = at if first is None else first
            if len(listed) == services:
                last = at
        elif message == "published snapshot" and published is None and int(entry.get("version") or 0) >= services:
            published = at
    return {"admin_listening_s": admin, "first_service_listed_s": first, "all_services_listed_s": last,
            "all_published_s": published}


def _sidecar_argv(config: Path, namespace: str, kubeconfig: Path, admin_port: int,
                  python_flags: tuple[str, ...] = ()) -> list[str]:
    # JSON logs: their timestamps give the start's phases (start_phases).
    return [sys.executable, *python_flags, "-m", "agent", "--log-format", "json", "sidecar", "--config", str(config),
            "--namespace", namespace, "--kubeconfig", str(kubeconfig), "--admin-port", str(admin_port)]


def run_case(env: Any, api: kb.ApiServer, audit_log: Path, workdir: Path, services: int, idle_seconds: float,
             churn_seconds: float, log: Any) -> dict[str, Any]:
    namespace = f"pod-{services}"
    names = [f"svc{i}" for i in range(services)]
    workdir.mkdir(parents=True, exist_ok=True)
    _namespace_rbac(env, namespace)
    token = env.token_for_service_account(namespace, "modelarts-sidecar", duration="2h")
    kubeconfig = env.kubeconfig_for_token(token, workdir / "sidecar.kubeconfig", namespace=namespace)
    generation = {name: 0 for name in names}
    for index, name in enumerate(names):
        api.call("POST", f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices",
                 _slice(namespace, name, 0, index))
    config, envoy_admin, _ = _config(workdir, names)
    bootstrap = workdir / "bootstrap.yaml"
    subprocess.run([sys.executable, "-m", "agent", "render", "bootstrap", "-c", str(config), "-o", str(bootstrap)],
                   cwd=REPO, check=True, capture_output=True, timeout=60)
    envoy = EnvoyProc(bootstrap, envoy_admin, workdir / "envoy.log")
    sidecar: subprocess.Popen[bytes] | None = None
    try:
        watches_before = kb.watch_count(api.metrics(), "endpointslices")
        first_ip = f"{ADDRESS_BASE}.0.1".encode()
        wanted = {name: {f"{ADDRESS_BASE}.{i}.{k + 1}" for k in range(SLICE_ENDPOINTS)} for i, name in enumerate(names)}
        log(f"sidecar, {services} service(s): starting")
        started_epoch = time.time()
        started = time.monotonic()
        admin_port = _free_port()
        with (workdir / "sidecar.log").open("wb") as out:
            sidecar = subprocess.Popen(_sidecar_argv(config, namespace, kubeconfig, admin_port), cwd=REPO,
                                       stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                       env={**os.environ, **IMAGE_ENV})
        pid = sidecar.pid
        first_file = envoy_first = envoy_all = start_cpu = None
        deadline = started + 60
        while time.monotonic() < deadline and envoy_all is None:
            if sidecar.poll() is not None:
                raise RuntimeError(f"the sidecar exited with {sidecar.returncode}: "
                                   f"{(workdir / 'sidecar.log').read_text()[-800:]}")
            now = time.monotonic() - started
            if first_file is None and _first_file_with(workdir / "envoy", first_ip):
                first_file = now
            try:
                hosts = envoy.hosts()
            except (requests.RequestException, ValueError):
                hosts = {}
            if envoy_first is None and any(hosts.get(n) == wanted[n] for n in names):
                envoy_first = now
            if all(hosts.get(n) == wanted[n] for n in names):
                envoy_all = now
                # CPU the sidecar used until then: what the start costs, whatever else the machine runs.
                start_cpu = kb.cpu_seconds(pid)
                if first_file is None:  # it landed between this round's two looks
                    first_file = now
            time.sleep(0.01)
        if envoy_all is None:
            raise RuntimeError(f"Envoy did not show every Service's hosts within 60 s: "
                               f"{(workdir / 'sidecar.log').read_text()[-800:]}")
        start_rss = kb.rss_mib(pid)
        # Settle: the first publications are done when the process stays under 3 % of a core for 2 s.
        for _ in range(10):
            c0 = kb.cpu_seconds(pid)
            time.sleep(2.0)
            if (kb.cpu_seconds(pid) - c0) / 2.0 < 0.03:
                break
        log(f"sidecar, {services} service(s): idle for {idle_seconds:.0f} s")
        idle_from = time.time()
        samples_before = api.metrics()
        idle = kb.sample_idle(pid, idle_seconds)
        samples_after = api.metrics()
        idle_to = time.time()
        watches_open = kb.watch_count(samples_after, "endpointslices") - watches_before
        memory = kb.smaps_rollup_mib(pid)
        envoy_memory = kb.smaps_rollup_mib(envoy.proc.pid)
        slice_requests_idle = (kb.metric_sum(samples_after, "apiserver_request_total", resource="endpointslices")
                               - kb.metric_sum(samples_before, "apiserver_request_total", resource="endpointslices"))

        log(f"sidecar, {services} service(s): churn for {churn_seconds:.0f} s (a slice change every second)")
        churn_from = time.time()
        c0, t0 = kb.cpu_seconds(pid), time.monotonic()
        rss_churn: list[float] = []
        lags: list[float] = []
        changes = 0
        while time.monotonic() - t0 < churn_seconds:
            tick = time.monotonic()
            index = changes % services
            name = names[index]
            generation[name] += 1
            body = _slice(namespace, name, generation[name], index)
            api.call("PUT", f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices/{name}-bench",
                     body)
            changes += 1
            target = {a for e in body["endpoints"] for a in e["addresses"]}
            written = time.monotonic()
            while time.monotonic() - written < 5:
                with_hosts = envoy.hosts()
                if with_hosts.get(name) == target:
                    lags.append(time.monotonic() - written)
                    break
                time.sleep(0.01)
            rss_churn.append(kb.rss_mib(pid))
            time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
        churn_elapsed = time.monotonic() - t0
        churn_cpu = (kb.cpu_seconds(pid) - c0) / churn_elapsed * 100
        churn_to = time.time()
        time.sleep(1.5)  # the audit log backend writes asynchronously
        records = kb.read_audit(audit_log)
        user = SA_USER.format(ns=namespace)
        startup = kb.count_requests(records, user, started_epoch, idle_from)
        idle_requests = kb.count_requests(records, user, idle_from, idle_to)
        churn_requests = kb.count_requests(records, user, churn_from, churn_to)
        rss_churn.sort()
        return {
            "services": services, "endpoints_per_service": SLICE_ENDPOINTS,
            "first_file_s": first_file, "envoy_first_cluster_s": envoy_first, "envoy_all_clusters_s": envoy_all,
            "start_phases": start_phases((workdir / "sidecar.log").read_text(errors="replace"), started_epoch,
                                         services),
            "rss_at_first_config_mib": start_rss, "cpu_until_envoy_all_s": start_cpu,
            "idle": {**idle, "memory": memory, "watches_open": watches_open,
                     "apiserver": idle_requests.to_json(),
                     "apiserver_endpointslice_requests_all_users": slice_requests_idle},
            "startup_requests": startup.to_json(),
            "churn": {"seconds": churn_elapsed, "changes": changes, "cpu_percent": churn_cpu,
                      "rss_mib": rss_churn[len(rss_churn) // 2] if rss_churn else float("nan"),
                      "rss_max_mib": rss_churn[-1] if rss_churn else float("nan"),
                      "to_envoy_p50_ms": statistics.median(lags) * 1000 if lags else None,
                      "to_envoy_max_ms": max(lags) * 1000 if lags else None, "seen": len(lags),
                      "apiserver": churn_requests.to_json()},
            "envoy": {"rss_mib": kb.rss_mib(envoy.proc.pid), "memory": envoy_memory},
        }
    finally:
        kb.stop_process(sidecar, 15)
        envoy.stop()


def import_profile(env: Any, api: kb.ApiServer, workdir: Path) -> dict[str, Any]:
    """One more start with `python -X importtime` (not a measured start): where the start-up time goes."""
    namespace = "pod-1"
    config = workdir.parent / "pod-1" / "agent.yaml"
    kubeconfig = workdir.parent / "pod-1" / "sidecar.kubeconfig"
    workdir.mkdir(parents=True, exist_ok=True)
    err = workdir / "importtime.txt"
    with err.open("wb") as out:
        proc = subprocess.Popen(_sidecar_argv(config, namespace, kubeconfig, _free_port(), ("-X", "importtime")),
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=out, start_new_session=True)
    try:
        kb.wait_until(lambda: b"published snapshot" in err.read_bytes(), 60, "the profiled sidecar to publish")
    finally:
        proc.terminate()
        proc.wait(15)
    return importtime_summary(err.read_text(errors="replace"))


def importtime_summary(text: str, top: int = 14) -> dict[str, Any]:
    """`-X importtime` lines -> self time per top-level package (ms), largest first, and the total."""
    by_package: dict[str, float] = {}
    total = 0.0
    for line in text.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        try:
            self_us, _cumulative, name = (part.strip() for part in line[len("import time:"):].split("|", 2))
            value = float(self_us) / 1000
        except ValueError:
            continue
        package = name.strip().split(".")[0]
        by_package[package] = by_package.get(package, 0.0) + value
        total += value
    ranked = sorted(by_package.items(), key=lambda kv: -kv[1])
    return {"total_ms": round(total, 1), "modules_top": [[k, round(v, 1)] for k, v in ranked[:top]],
            "packages": len(by_package)}
