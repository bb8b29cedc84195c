"""Controller at scale: N ModelArtsServices over M credential Secrets on a real kube-apiserver + the emulator.

Set-up (before the controller starts, as after an install or a restart with CRs in place): the
emulator (in this process) with M IAM users at the real limits (20 calls per user per minute) and N
services of 2 instances each (listed, not listening: 10.40.x.y, accepted in EndpointSlices, never
connected to); M Secrets (one IAM user each) spread over 5 namespaces, N CRs spread over the Secrets.

Then `modelarts-agent controller` (one replica, the defaults of its flags) starts, and the benchmark
measures, from outside:

- time until every CR has `Synced=True` with its 2 endpoints in its status, and until every
  Service's EndpointSlices carry its 2 endpoints (CRs and slices listed every 3 s);
- the controller's RSS and CPU (from /proc) during the sync and at steady state;
- at steady state (from all-synced + 10 s until 320 s after the start, so one 300 s resync falls
  inside): the controller's apiserver requests and writes per minute by kind (audit log), Lease
  renewals apart, and how many objects really changed (resourceVersions before and after);
- ModelArts calls per IAM user: the busiest user's calls in any 60 s window, from the emulator's log.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench import kube_bench as kb
from bench.env import REPO

SYSTEM_NS = "modelarts-system"
CONTROLLER_USER = f"system:serviceaccount:{SYSTEM_NS}:modelarts-agent"
NAMESPACES = 5
INSTANCES = 2
ADDRESS_BASE = "10.40.0.10"
SYNC_BOUND = 300.0  # seconds: a sync that takes longer is reported as such, and a shorter window follows
STEADY_UNTIL = 320.0  # seconds after the start: one resync (every 300 s by default) falls in the window


@dataclass(frozen=True)
class Scale:
    crs: int
    secrets: int
    steady_seconds: float  # at least this long, even when the sync took long
    steady_until: float | None = STEADY_UNTIL  # and until this long after the start (None: no resync inside)


def _emulator_module() -> Any:
    """The emulator package where it is now (it moved from agent/emulator to emulator/modelarts_emulator)."""
    try:
        import modelarts_emulator
    except ImportError:
        if (REPO / "emulator" / "modelarts_emulator").is_dir():
            sys.path.insert(0, str(REPO / "emulator"))
            import modelarts_emulator
        else:
            import agent.emulator as modelarts_emulator  # type: ignore[no-redef]
    return modelarts_emulator


@contextlib.contextmanager
def _listed_only(emulator: Any) -> Iterator[None]:
    """Instances that ModelArts lists but that do not listen: 2,000 listeners are not what is measured."""
    instances = sys.modules[emulator.__name__ + ".instances"]
    original = instances.Instance.start

    async def start(self: Any) -> None:
        self.state = "running"

    instances.Instance.start = start
    try:
        yield
    finally:
        instances.Instance.start = original


def _rbac(env: Any, namespaces: list[str]) -> None:
    env.kubectl("apply", "-f", str(kb.CRD))
    env.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/modelartsservices.vpc.modelarts.io")
    env.kubectl("create", "namespace", SYSTEM_NS)
    for name in ("controller-serviceaccount.yaml", "controller-clusterrole.yaml",
                 "controller-leader-election-role.yaml", "credentials-reader-clusterrole.yaml"):
        env.kubectl("apply", "-f", str(kb.RBAC / name))
    binding = yaml.safe_load((kb.RBAC / "credentials-reader-rolebinding.yaml").read_text())
    items = []
    for namespace in namespaces:
        env.kubectl("create", "namespace", namespace)
        items.append({**binding, "metadata": {**binding["metadata"], "namespace": namespace}})
    env.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))


def _versions(api: kb.ApiServer, namespaces: list[str]) -> dict[str, str]:
    """resourceVersion of every object the controller writes (Services, slices, CRs, Events)."""
    found: dict[str, str] = {}
    for namespace in namespaces:
        for path in (f"/api/v1/namespaces/{namespace}/services", f"/api/v1/namespaces/{namespace}/events",
                     f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices",
                     f"/apis/vpc.modelarts.io/v1alpha1/namespaces/{namespace}/modelartsservices"):
            for item in api.call("GET", path + "?limit=5000", timeout=60)["items"]:
                meta = item["metadata"]
                found[f"{path.rsplit('/', 1)[1]}/{namespace}/{meta['name']}"] = meta["resourceVersion"]
    return found


def _synced_count(api: kb.ApiServer) -> int:
    items = api.call("GET", "/apis/vpc.modelarts.io/v1alpha1/modelartsservices?limit=5000", timeout=60)["items"]
    done = 0
    for item in items:
        status = item.get("status") or {}
        synced = any(c.get("type") == "Synced" and c.get("status") == "True" for c in status.get("conditions") or [])
        done += synced and status.get("endpointCount") == INSTANCES
    return done


def _sliced_count(api: kb.ApiServer) -> int:
    """Services whose EndpointSlices (written by the controller) carry all their endpoints."""
    items = api.call("GET", "/apis/discovery.k8s.io/v1/endpointslices?limit=5000&labelSelector="
                     "endpointslice.kubernetes.io/managed-by%3Dmodelarts-agent", timeout=60)["items"]
    per_service: Counter[str] = Counter()
    for item in items:
        name = (item["metadata"].get("labels") or {}).get("kubernetes.io/service-name", "")
        per_service[f"{item['metadata']['namespace']}/{name}"] += len(item.get("endpoints") or [])
    return sum(1 for count in per_service.values() if count == INSTANCES)


def busiest_minute(times_by_user: dict[str, list[float]]) -> tuple[str, int]:
    """The user with the most calls in any 60 s window, and that count (sliding window over call times)."""
    best_user, best = "", 0
    for user, times in times_by_user.items():
        times = sorted(times)
        start = 0
        for end, t in enumerate(times):
            while t - times[start] >= 60.0:
                start += 1
            if end - start + 1 > best:
                best_user, best = user, end - start + 1
    return best_user, best


def run(env: Any, api: kb.ApiServer, audit_log: Path, workdir: Path, scale: Scale,
        log: Callable[[str], None]) -> dict[str, Any]:
    emu_pkg = _emulator_module()
    config_module = sys.modules[emu_pkg.__name__ + ".config"] if emu_pkg.__name__ + ".config" in sys.modules else \
        __import__(emu_pkg.__name__ + ".config", fromlist=["x"])
    domain, project = config_module.DEFAULT_DOMAIN, config_module.DEFAULT_PROJECT_ID
    namespaces = [f"scale-{i}" for i in range(NAMESPACES)]
    users = [{"domain": domain, "name": f"user-{k}", "password": f"password-{k}"} for k in range(scale.secrets)]
    config = emu_pkg.EmulatorConfig.model_validate({
        "users": users, "instance_address_base": ADDRESS_BASE,
        "services": [{"name": f"svc-{j}", "service_id": f"scale-{j}", "instances": INSTANCES, "port": 8080}
                     for j in range(scale.crs)]})
    log(f"controller: emulator with {scale.crs} services, {scale.secrets} users; RBAC, Secrets, CRs")
    with _listed_only(emu_pkg):
        emulator = emu_pkg.Emulator(config).start(timeout=120)
    controller: subprocess.Popen[bytes] | None = None
    try:
        _rbac(env, namespaces)
        for k in range(scale.secrets):
            api.call("POST", f"/api/v1/namespaces/{namespaces[k % NAMESPACES]}/secrets", {
                "apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"creds-{k}"},
                "stringData": {"domain": domain, "user": f"user-{k}", "password": f"password-{k}"}})

        def create(j: int) -> None:
            k = j % scale.secrets
            path = f"/apis/vpc.modelarts.io/v1alpha1/namespaces/{namespaces[k % NAMESPACES]}/modelartsservices"
            api.call("POST", path, {
                "apiVersion": "vpc.modelarts.io/v1alpha1", "kind": "ModelArtsService", "metadata": {"name": f"svc-{j}"},
                "spec": {"projectId": project, "serviceId": f"scale-{j}", "modelartsUrl": emulator.modelarts_url,
                         "iamUrl": emulator.iam_url, "credentialsSecretRef": {"name": f"creds-{k}"},
                         "allowedCIDRs": ["10.40.0.0/16"]}})

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(create, range(scale.crs)))
        token = env.token_for_service_account(SYSTEM_NS, "modelarts-agent", duration="2h")
        kubeconfig = env.kubeconfig_for_token(token, workdir / "controller.kubeconfig")
        emulator.admin.reset_calls()
        time.sleep(1.0)
        log("controller: starting")
        admin_port = kb_free_port()
        started_epoch, started = time.time(), time.monotonic()
        emu_started = emulator.admin.now()
        with (workdir / "controller.log").open("wb") as out:
            controller = subprocess.Popen(
                [sys.executable, "-m", "agent", "--log-format", "text", "controller", "--kubeconfig", str(kubeconfig),
                 "--lease-namespace", SYSTEM_NS, "--identity", "bench", "--admin-port", str(admin_port),
                 "--allowed-endpoint-hosts", "127.0.0.1,localhost"],
                cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        pid = controller.pid
        synced, synced_at, progress = 0, None, []
        sliced, sliced_at = 0, None
        sync_deadline = started + SYNC_BOUND
        peak_rss = 0.0
        while time.monotonic() < sync_deadline:
            if controller.poll() is not None:
                raise RuntimeError(f"the controller exited with {controller.returncode}: "
                                   f"{(workdir / 'controller.log').read_text()[-800:]}")
            with contextlib.suppress(Exception):
                synced = _synced_count(api)
            with contextlib.suppress(Exception):
                sliced = _sliced_count(api)
            elapsed = time.monotonic() - started
            progress.append([round(elapsed, 1), synced, sliced])
            peak_rss = max(peak_rss, kb.rss_mib(pid))
            log(f"controller: {synced}/{scale.crs} CRs Synced=True, {sliced} with their slices after {elapsed:.0f} s")
            if synced >= scale.crs and synced_at is None:
                synced_at = elapsed
            if sliced >= scale.crs and sliced_at is None:
                sliced_at = elapsed
            if synced_at is not None and sliced_at is not None:
                break
            time.sleep(3.0)
        sync_cpu = kb.cpu_seconds(pid)
        time.sleep(10.0)
        # Not all synced within the bound: the figures of a shorter window are still worth having (and say so).
        steady_end = time.monotonic() + 60.0 if synced_at is None else \
            max(time.monotonic() + scale.steady_seconds, started + (scale.steady_until or 0.0))
        log(f"controller: steady state for {steady_end - time.monotonic():.0f} s")
        versions_before = _versions(api, namespaces)
        steady_from, steady_mono = time.time(), time.monotonic()
        emu_steady_from = emulator.admin.now()
        steady_sample = kb.sample_idle(pid, steady_end - time.monotonic(), interval=2.0)
        peak_rss = max(peak_rss, steady_sample["rss_max_mib"])
        steady_seconds = time.monotonic() - steady_mono
        steady_cpu = steady_sample["cpu_percent"]
        steady_to = time.time()
        emu_steady_to = emulator.admin.now()
        versions_after = _versions(api, namespaces)
        memory = kb.smaps_rollup_mib(pid)
        time.sleep(1.5)  # the audit backend writes asynchronously
        records = kb.read_audit(audit_log)
        steady = kb.count_requests(records, CONTROLLER_USER, steady_from, steady_to,
                                   exclude_resources=frozenset({"leases"}))
        leases = kb.count_requests(records, CONTROLLER_USER, steady_from, steady_to)
        sync_requests = kb.count_requests(records, CONTROLLER_USER, started_epoch, steady_from)
        changed = Counter(key.split("/", 1)[0] for key, version in versions_after.items()
                          if versions_before.get(key) != version)
        calls = emulator.admin.calls()
        by_user: dict[str, list[float]] = {}
        steady_by_user: Counter[str] = Counter()
        iam_calls = 0
        for call in calls:
            if call.time < emu_started:
                continue
            if call.api == "iam":
                iam_calls += 1
                continue
            by_user.setdefault(call.user or "?", []).append(call.time)
            if emu_steady_from <= call.time < emu_steady_to:
                steady_by_user[call.user or "?"] += 1
        busiest_user, busiest = busiest_minute(by_user)
        steady_minutes = (emu_steady_to - emu_steady_from) / 60
        return {
            "crs": scale.crs, "secrets": scale.secrets, "namespaces": NAMESPACES, "instances_per_service": INSTANCES,
            "synced_after_s": round(synced_at, 1) if synced_at is not None else None, "synced_at_bound": synced,
            "sliced_after_s": round(sliced_at, 1) if sliced_at is not None else None, "sliced_at_bound": sliced,
            "sync_bound_s": round(sync_deadline - started), "sync_progress": progress,
            "sync_cpu_s": round(sync_cpu, 1), "peak_rss_mib": round(peak_rss, 1),
            "sync_requests": sync_requests.to_json(),
            "steady": {"seconds": round(steady_seconds, 1), "cpu_percent": round(steady_cpu, 2),
                       "rss_mib": steady_sample["rss_mib"], "memory": memory,
                       "apiserver_without_leases": steady.to_json(),
                       "lease_requests_per_minute": round(leases.per_minute(leases.total - steady.total), 2),
                       "objects_changed": dict(changed)},
            "modelarts": {"calls": sum(len(v) for v in by_user.values()), "iam_calls": iam_calls,
                          "users_calling": len(by_user), "busiest_user": busiest_user,
                          "busiest_user_max_per_60s": busiest,
                          "steady_per_user_per_minute_max": round(max(steady_by_user.values(), default=0)
                                                                  / steady_minutes, 2) if steady_minutes else None,
                          "steady_per_user_per_minute_mean": round(sum(steady_by_user.values()) / max(1, scale.secrets)
                                                                   / steady_minutes, 2) if steady_minutes else None},
        }
    finally:
        kb.stop_process(controller, 20)
        emulator.stop()


def kb_free_port() -> int:
    from tests.kubeenv import free_port

    return free_port()
