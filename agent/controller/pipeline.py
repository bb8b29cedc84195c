"""What the leader runs: pollers per credential identity, one snapshot store, the kubernetes sink, the status writer.

A `Pipeline` is built when this replica starts leading and torn down when it stops, so nothing
in it can outlive the lease:

- Every ModelArts and IAM request goes through a session that refuses to send unless the
  elector still says "leader" (checked at send time, not when the poll was planned), and every
  Kubernetes write passes the same guard.
- Its `BudgetRegistry` is created at acquisition and starts warm, so the first look-up of each
  identity comes one pacing interval after taking over: the old leader's last call and the new
  leader's first one are at least that far apart, and no rate window can overflow.

CRs are grouped by (Secret, endpoints, project, allowed CIDRs); each group has its own client
and `ModelArtsSource`, while budgets are shared per IAM identity through the registry. A change
of a Secret's content rebuilds the groups that use it (new authenticator, no stale token).

Of the composition root (agent/app/) it uses the pieces, not the `Runtime`: the store, a
`SinkSet` for its one sink, and each group's poller as a `Source` (agent/sources/poller.py, the
same one `run` has). The rest of `Runtime` does not fit: its life is one leadership term (built and
halted by the elector, not by a signal), it owns no Envoy (no adaptive loop, no rendered files),
its sources come and go with the CRs and Secrets, and its status goes to the CRs and the
controller's own /status, served by the replica for its whole life.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import requests

from agent.config import (
    AgentConfig,
    AuthConfig,
    AuthMode,
    BudgetConfig,
    DiscoveryConfig,
    ModelArtsEndpoints,
    ServiceSpec,
    config_errors,
)
from agent.controller.crd import ModelArtsServiceResource, parse_resource
from agent.controller.credentials import CredentialsProblem, SecretCredentials, SecretRef, SecretStore
from agent.controller.endpoints import EndpointAllowList
from agent.controller.sink import KubernetesSink
from agent.controller.status import Problem, StatusInput, build_status, events_for
from agent.errors import ConfigError
from agent.kube import GROUP, KIND, VERSION
from agent.kube.client import EventRecorder, KubeApiError, KubeClient, NotLeader, now_rfc3339
from agent.loops import FailureLog
from agent.modelarts.budget import BudgetRegistry
from agent.modelarts.client import ModelArtsClient, build_authenticator
from agent.sinks.runner import SinkSet
from agent.snapshot import SnapshotStore
from agent.sources.modelarts import ModelArtsSource
from agent.sources.poller import Poller
from agent.validation import DEFAULT_ALLOWED_CIDRS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineSettings:
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    timeout_seconds: float = 10.0
    legacy_endpoints: bool = False
    secret_refresh_seconds: float = 10.0
    resync_seconds: float = 300.0
    status_interval_seconds: float = 1.0
    # Hosts a CR's modelartsUrl/iamUrl may name: credentials go nowhere else (agent/controller/endpoints.py).
    allowed_endpoints: EndpointAllowList = field(default_factory=EndpointAllowList)


@dataclass(frozen=True)
class GroupKey:
    namespace: str
    secret: str
    modelarts_url: str
    iam_url: str
    project_id: str
    allowed_cidrs: tuple[str, ...]


class NotLeaderError(requests.RequestException):
    """Raised instead of sending a ModelArts/IAM request once this replica may no longer lead."""


class GuardedSession(requests.Session):
    def __init__(self, may_call: Any) -> None:
        super().__init__()
        self._may_call = may_call
        # Never let an environment proxy see the credentials or reroute discovery.
        self.trust_env = False

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        if not self._may_call():
            raise NotLeaderError("not the leader: no ModelArts or IAM request may be sent")
        return super().request(method, url, *args, **kwargs)


class _Group:
    """One client + poller for the CRs sharing a Secret, endpoints, project and CIDR allow-list."""

    def __init__(self, key: GroupKey, creds: SecretCredentials, config: AgentConfig, store: SnapshotStore,
                 budgets: BudgetRegistry, may_call: Any) -> None:
        self.key = key
        self.fingerprint = creds.fingerprint
        self.config = config
        self.stop = threading.Event()
        session = GuardedSession(may_call)
        credentials = creds.credentials()
        identity = credentials.identity()
        self.identity = identity.user
        self.client = ModelArtsClient(
            modelarts_url=config.modelarts.modelarts_url, project_id=config.modelarts.project_id,
            auth=build_authenticator(config, credentials, session), budget=budgets.budget(identity.user,
                                                                                        identity.tenant),
            session=session, timeout=config.modelarts.timeout_seconds,
            max_body_bytes=config.modelarts.max_body_bytes, stop=self.stop)
        self.source = ModelArtsSource(config, store, self.client, stop=self.stop)
        # The same `Source` as run's poller: whatever the loop raises, this Secret's services keep being
        # polled (after a bounded backoff).
        self.poller = Poller(self.source, self.stop, name=f"{key.namespace}/{key.secret}",
                             description=f"the ModelArts poller for Secret {key.namespace}/{key.secret}")

    def update(self, config: AgentConfig) -> None:
        self.config = config
        self.source.update_config(config)

    def close(self) -> None:
        self.stop.set()  # not Poller.stop(): no waiting here, the pipeline joins every thread at the end


def group_config(key: GroupKey, creds: SecretCredentials, specs: list[ServiceSpec],
                 settings: PipelineSettings) -> AgentConfig:
    """One group's config, built from typed parts (the CRs' specs as they are, not re-parsed copies).
    Each part is validated as the YAML would be, and a bad value gives the same error text."""
    source = f"ModelArtsServices using Secret {key.namespace}/{key.secret}"
    with config_errors(source, "modelarts"):
        modelarts = ModelArtsEndpoints(iam_url=key.iam_url, modelarts_url=key.modelarts_url,
                                       project_id=key.project_id, timeout_seconds=settings.timeout_seconds)
    with config_errors(source, "auth"):
        auth = AuthConfig(mode=creds.mode, domain=creds.domain, user=creds.user)
    with config_errors(source, "discovery"):
        discovery = DiscoveryConfig(**{**dict(settings.discovery), "allowed_cidrs": key.allowed_cidrs})
    with config_errors(source):
        return AgentConfig(modelarts=modelarts, auth=auth, budget=settings.budget, discovery=discovery,
                           services=tuple(specs))


def _what_reconcile_reads(crs: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """The parts of each CR that reconcile() looks at (not its status, resourceVersion or managedFields)."""
    return {key: ((obj.get("metadata") or {}).get("uid"), (obj.get("metadata") or {}).get("generation"),
                  (obj.get("metadata") or {}).get("deletionTimestamp"), obj.get("spec"))
            for key, obj in crs.items()}


class Pipeline:
    def __init__(self, kube: KubeClient, settings: PipelineSettings, is_leader: Any, events: EventRecorder) -> None:
        self._kube = kube
        self._settings = settings
        self._events = events
        self.stop = threading.Event()
        self.store = SnapshotStore((), settings.discovery)
        # Created now, at acquisition: warm start = the first call waits one pacing interval.
        self.budgets = BudgetRegistry(settings.budget.per_user_per_minute, settings.budget.per_tenant_per_minute,
                                      settings.budget.safety_margin_seconds)
        self.secrets = SecretStore(kube)
        self._is_leader = is_leader
        self.sink = KubernetesSink(kube, self.targets, self.may_act, self.stop, settings.legacy_endpoints)
        self.sinks = SinkSet([self.sink], self.store, self.stop)
        self.runner = self.sinks.runners[0]
        self._lock = threading.Lock()
        self._crs: dict[str, dict[str, Any]] = {}
        self._resources: dict[str, ModelArtsServiceResource] = {}  # by "namespace/name"
        self._problems: dict[str, Problem] = {}
        self._groups: dict[GroupKey, _Group] = {}
        self._membership: dict[str, GroupKey] = {}  # snapshot key -> group
        self._written: dict[str, dict[str, Any]] = {}  # CR uid -> status we last applied
        self._dirty = threading.Event()
        self._reconcile_failures = FailureLog(log, "reconcile")
        self._status_failures = FailureLog(log, "status writer")
        self._threads = [threading.Thread(target=self._reconcile_loop, name="reconcile", daemon=True),
                         threading.Thread(target=self._status_loop, name="status-writer", daemon=True)]

    # -- life cycle ----------------------------------------------------------------------------------

    def may_act(self) -> bool:
        return not self.stop.is_set() and bool(self._is_leader())

    def start(self) -> None:
        self.sinks.start()
        for thread in self._threads:
            thread.start()

    def halt(self) -> None:
        """Stop at once (lock-free): after this no request leaves, whatever the threads are doing."""
        self.stop.set()

    def close(self, timeout: float = 5.0) -> None:
        self.halt()
        # This term's gauges go with it; the next leader (maybe this replica again) writes its own.
        self.store.retire_metrics()
        with self._lock:
            groups = list(self._groups.values())
            self._groups.clear()
        for group in groups:
            group.close()
        for thread in [*self._threads, self.runner.thread, *(g.poller.thread for g in groups)]:
            if thread.is_alive():
                thread.join(timeout)

    def submit(self, crs: Mapping[str, dict[str, Any]]) -> None:
        """The latest ModelArtsServices (from the controller's watch); applied by the reconcile thread.

        A change of status only (every status write comes back as a watch event) needs no reconcile: at
        1,000 CRs each one re-parsed every CR and rebuilt every group's config, and the status writes
        of a sync kept the controller's CPU busy with that."""
        with self._lock:
            before, self._crs = self._crs, dict(crs)
            changed = _what_reconcile_reads(before) != _what_reconcile_reads(self._crs)
        if changed or not before:
            self._dirty.set()

    def targets(self) -> dict[str, ModelArtsServiceResource]:
        with self._lock:
            return {r.key: r for r in self._resources.values()}

    # -- reconcile -----------------------------------------------------------------------------------

    def _reconcile_loop(self) -> None:
        refresh = self._settings.secret_refresh_seconds
        resync_every = max(1, round(self._settings.resync_seconds / refresh))
        ticks = 0
        # The Secrets are re-read on their own deadline: CR events (every status write makes one) wake
        # this loop far more often than `refresh`, and a timeout-only re-read would never run then.
        next_refresh = time.monotonic() + refresh
        while not self.stop.is_set():
            woken = self._dirty.wait(max(0.0, next_refresh - time.monotonic()))
            if self.stop.is_set():
                return
            try:
                if woken:
                    self._dirty.clear()
                    self.reconcile()
                if time.monotonic() < next_refresh:
                    continue
                next_refresh = time.monotonic() + refresh
                ticks += 1
                self.refresh_secrets()
                if ticks % resync_every == 0:
                    self.sink.forget()  # every object is written again: repairs drift, e.g. a slice deleted by hand
                    self.sinks.republish()
            except Exception as exc:
                self._reconcile_failures.failed(exc)
                self.stop.wait(1.0)
            else:
                self._reconcile_failures.recovered()

    def refresh_secrets(self) -> None:
        """Re-read every referenced Secret; rebuild the clients of those that changed."""
        with self._lock:
            refs = {self._secret_ref(obj) for obj in self._crs.values()} - {None}
        changed = self.secrets.refresh(ref for ref in refs if ref is not None)
        if changed:
            log.info("credentials changed; rebuilding their clients",
                     extra={"secrets": sorted(f"{n}/{s}" for n, s in changed)})
            self.reconcile()

    @staticmethod
    def _secret_ref(obj: dict[str, Any]) -> SecretRef | None:
        meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
        name = (spec.get("credentialsSecretRef") or {}).get("name")
        return (str(meta.get("namespace")), str(name)) if name else None

    def reconcile(self) -> None:
        with self._lock:
            crs = dict(self._crs)
        resources: dict[str, ModelArtsServiceResource] = {}
        problems: dict[str, Problem] = {}
        wanted: dict[GroupKey, tuple[SecretCredentials, list[ServiceSpec]]] = {}
        membership: dict[str, GroupKey] = {}
        default_interval = self._settings.discovery.default_poll_interval_seconds
        for okey, obj in crs.items():
            if (obj.get("metadata") or {}).get("deletionTimestamp"):
                continue  # being deleted: stop polling now, the garbage collector does the rest
            try:
                resource = parse_resource(obj)
            except ConfigError as exc:
                problems[okey] = Problem("InvalidSpec", str(exc))
                continue
            spec = resource.spec
            # Before the Secret is even read: a CR may not send this namespace's credentials anywhere.
            refusal = self._settings.allowed_endpoints.refusal("spec.modelartsUrl", spec.modelarts_url) or (
                self._settings.allowed_endpoints.refusal("spec.iamUrl", spec.iam_url) if spec.iam_url else None)
            if refusal is not None:
                problems[okey] = Problem("EndpointNotAllowed", f"ModelArtsService {okey}: {refusal}")
                continue
            try:
                creds = self.secrets.get((resource.namespace, spec.credentials_secret_ref.name))
            except CredentialsProblem as exc:
                problems[okey] = exc.problem
                continue
            if creds.mode is AuthMode.password and not spec.iam_url:
                problems[okey] = Problem("InvalidSpec", f"ModelArtsService {okey} is invalid: spec.iamUrl is "
                                                        f"required because its Secret holds a password")
                continue
            key = GroupKey(resource.namespace, spec.credentials_secret_ref.name, spec.modelarts_url,
                           spec.iam_url or spec.modelarts_url, spec.project_id,
                           tuple(spec.allowed_cidrs) if spec.allowed_cidrs is not None else DEFAULT_ALLOWED_CIDRS)
            resources[okey] = resource
            membership[resource.key] = key
            wanted.setdefault(key, (creds, []))[1].append(resource.service_spec(default_interval))
        configs: dict[GroupKey, AgentConfig] = {}
        for key, (creds, specs) in wanted.items():
            try:
                configs[key] = group_config(key, creds, specs, self._settings)
            except ConfigError as exc:
                for okey, resource in list(resources.items()):
                    if membership.get(resource.key) == key:
                        problems[okey] = Problem("InvalidSpec", str(exc).replace("\n", " "))
                        del resources[okey]
        if self.stop.is_set():
            return
        self.store.set_specs([s for key in configs for s in configs[key].services], self._settings.discovery)
        with self._lock:
            changed = resources != self._resources
            self._resources, self._problems = resources, problems
            self._membership = {k: g for k, g in membership.items() if g in configs}
            self._apply_groups(wanted, configs)
        if changed:
            self.sinks.republish()

    def _apply_groups(self, wanted: Mapping[GroupKey, tuple[SecretCredentials, list[ServiceSpec]]],
                      configs: Mapping[GroupKey, AgentConfig]) -> None:
        for key in set(self._groups) - set(configs):
            self._groups.pop(key).close()
        for key, config in configs.items():
            creds = wanted[key][0]
            group = self._groups.get(key)
            if group is not None and group.fingerprint == creds.fingerprint:
                group.update(config)
                continue
            if group is not None:
                group.close()
            group = _Group(key, creds, config, self.store, self.budgets, self.may_act)
            self._groups[key] = group
            group.poller.start()
            log.info("polling ModelArts", extra={"secret": f"{key.namespace}/{key.secret}",
                                                 "identity": group.identity, "services": len(config.services)})

    # -- status --------------------------------------------------------------------------------------

    def _status_loop(self) -> None:
        while not self.stop.wait(self._settings.status_interval_seconds):
            try:
                self.write_statuses()
            except NotLeader:
                return
            except Exception as exc:
                self._status_failures.failed(exc)
            else:
                self._status_failures.recovered()

    def effective_interval(self, resource: ModelArtsServiceResource) -> float | None:
        """The poll interval the shared budget can honour: all services of the same identity take turns."""
        with self._lock:
            group = self._groups.get(self._membership.get(resource.key))  # type: ignore[arg-type]
            if group is None:
                return None
            budget = group.client.budget
            sharing = sum(len(g.config.services) for g in self._groups.values() if g.client.budget is budget)
        interval = resource.service_spec(self._settings.discovery.default_poll_interval_seconds).poll_interval_seconds
        return max(interval or 0.0, sharing * budget.spacing)

    def write_statuses(self) -> None:
        with self._lock:
            crs, resources, problems = dict(self._crs), dict(self._resources), dict(self._problems)
        sink_problems = self.sink.problems()
        now = now_rfc3339()
        snapshot = self.store.snapshot
        for okey, obj in crs.items():
            meta = obj.get("metadata") or {}
            if meta.get("deletionTimestamp"):
                continue
            resource = resources.get(okey)
            problem = problems.get(okey) or (sink_problems.get(resource.key) if resource else None)
            inp = StatusInput(generation=int(meta.get("generation") or 0), problem=problem)
            if resource is not None and problem is None:
                inp = StatusInput(generation=resource.generation, sync=self.store.status(resource.key),
                                  service=snapshot.services.get(resource.key),
                                  effective_interval=self.effective_interval(resource))
            uid = str(meta.get("uid", ""))
            previous = self._written.get(uid) or obj.get("status") or {}
            desired = build_status(inp, previous, now)
            if desired is None or desired == previous:
                continue
            body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
                    "metadata": {"name": meta["name"], "namespace": meta["namespace"]}, "status": desired}
            try:
                self._kube.apply(body, subresource="status", guard=self.may_act, stop=self.stop)
            except KubeApiError as exc:
                if exc.status != 404:  # 404: the CR was deleted meanwhile
                    log.warning("cannot write status: %s", exc, extra={"resource": okey})
                continue
            self._written[uid] = desired
            for event in events_for(previous, desired, problem):
                if not self.may_act():
                    return
                self._events.emit(obj, event.type, event.reason, event.message)
        live = {str((obj.get("metadata") or {}).get("uid", "")) for obj in crs.values()}
        for uid in set(self._written) - live:
            del self._written[uid]

    # -- introspection -------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        with self._lock:
            groups = list(self._groups.values())
            problems = {k: p.__dict__ for k, p in self._problems.items()}
            resources = {k: r.key for k, r in self._resources.items()}
        return {
            "resources": resources,
            "problems": problems,
            "groups": [{"secret": f"{g.key.namespace}/{g.key.secret}", "identity": g.identity,
                        "services": [s.name for s in g.config.services]} for g in groups],
            "budgets": [b.usage().__dict__ for b in self.budgets.budgets()],
            "sink": {"published_version": self.runner.published_version, "last_error": self.runner.last_error},
        }
