"""The kubernetes sink: per ModelArtsService a selectorless Service and its EndpointSlices, by server-side apply.

For each CR-backed service in a snapshot:

1. the Service (ClusterIP or headless), owned by the CR, so the garbage collector removes it
   with the CR. A Service of that name that some other owner made is left alone and reported.
2. once the service has synced, its EndpointSlices (at most 100 endpoints each, ready
   conditions from the snapshot); then slices we manage under that Service that are no longer
   produced are deleted (new ones first, so there is no gap);
3. with `legacy_endpoints`, a v1 Endpoints object too, labelled so the mirroring controller
   does not copy it into a second set of slices.

Before a service has synced in this leadership term its slices are not touched: a new leader
keeps serving what the previous one wrote. Every write passes the leadership guard first.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from agent.controller.crd import ModelArtsServiceResource
from agent.controller.objects import Owner, endpoint_slices, lb_annotation, port_name, service_manifest
from agent.controller.status import Problem
from agent.kube import MANAGED_BY, MANAGED_BY_LABEL, SERVICE_NAME_LABEL
from agent.kube.client import KubeApiError, KubeClient, collection_path, object_path
from agent.model import Endpoint, ServiceSnapshot, Snapshot, effective_protocol
from agent.sinks import SinkError

log = logging.getLogger(__name__)

SKIP_MIRROR_LABEL = "endpointslice.kubernetes.io/skip-mirror"
PUBLISH_WORKERS = 4  # services written at the same time (each waits for the apiserver's answers)

Targets = Callable[[], Mapping[str, ModelArtsServiceResource]]


def endpoints_manifest(resource: ModelArtsServiceResource, endpoints: Sequence[Endpoint], protocol: str,
                       owner: Owner) -> dict[str, Any]:
    """The legacy v1 Endpoints twin of the slices (opt-in, for consumers that still read Endpoints)."""
    by_port: dict[int, list[Endpoint]] = defaultdict(list)
    for endpoint in sorted(endpoints):
        by_port[endpoint.port].append(endpoint)
    subsets = []
    for port, members in sorted(by_port.items()):
        subset: dict[str, Any] = {"ports": [{"name": port_name(protocol), "port": port, "protocol": "TCP"}]}
        ready = [{"ip": e.ip} for e in members if e.ready]
        not_ready = [{"ip": e.ip} for e in members if not e.ready]
        if ready:
            subset["addresses"] = ready
        if not_ready:
            subset["notReadyAddresses"] = not_ready
        subsets.append(subset)
    return {
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": resource.name, "namespace": resource.namespace,
                     "labels": {"app.kubernetes.io/managed-by": MANAGED_BY, SKIP_MIRROR_LABEL: "true"},
                     "ownerReferences": [owner.reference()]},
        "subsets": subsets,
    }


class ServiceConflict(Exception):
    pass


@dataclass
class _Live:
    """Our objects as the apiserver has them: Services by (namespace, name), slices by (namespace, Service)."""

    services: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    slices: dict[tuple[str, str], dict[str, dict[str, Any]]] = field(default_factory=dict)


def _holds(live: Any, want: Any) -> bool:
    """`live` has every field of `want` with the same value (lists item by item, in order)."""
    if isinstance(want, dict):
        return isinstance(live, dict) and all(_holds(live.get(k), v) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(live, list) and len(live) == len(want) and \
            all(_holds(a, b) for a, b in zip(live, want, strict=True))
    return bool(live == want)


class KubernetesSink:
    name = "kubernetes"

    def __init__(self, kube: KubeClient, targets: Targets, guard: Callable[[], bool], stop: threading.Event,
                 legacy_endpoints: bool = False) -> None:
        self._kube = kube
        self._targets = targets
        self._guard = guard
        self._stop = stop
        self._legacy = legacy_endpoints
        self._lock = threading.Lock()
        self._problems: dict[str, Problem] = {}
        self._owned: set[tuple[str, str, str]] = set()  # Services known to be ours: (namespace, name, uid)
        # What was last written per service: a snapshot carries every service, and re-applying all of them
        # whenever one changed cost ~3,000 requests per poll at 1,000 CRs. forget() makes the next publish
        # compare every service's objects with the apiserver's and rewrite those that drifted.
        self._written: dict[str, tuple[ModelArtsServiceResource, ServiceSnapshot]] = {}
        self._verify = False

    def problems(self) -> dict[str, Problem]:
        """Per service key, why its objects could not be written (cleared by the next good write)."""
        with self._lock:
            return dict(self._problems)

    def forget(self) -> None:
        """The next publish reads our objects back (slices by namespace, Services one by one) and rewrites the
        services whose Service or slices differ from what it would write (deleted or edited by hand); the others
        cost no write. Re-applying all of them unread was ~2,000 no-op writes per resync at 1,000 CRs."""
        with self._lock:
            self._verify = True

    def publish(self, snapshot: Snapshot) -> None:
        targets = self._targets()
        failures: list[str] = []
        with self._lock:
            written = dict(self._written)
            verify, self._verify = self._verify, False
        live = _Live()
        if verify:
            try:
                live = self._read_back(targets.values())
            except KubeApiError as exc:  # cannot read back: write everything, as a resync did before
                log.warning("cannot read our objects back; rewriting them all: %s", exc)
                written = {}
        todo: list[tuple[str, ModelArtsServiceResource, ServiceSnapshot, set[str] | None]] = []
        for key, svc in snapshot.services.items():
            resource = targets.get(key)
            if resource is None:
                continue
            before = written.get(key)
            if before == (resource, svc) and (not verify or self._in_place(resource, svc, live)):
                continue
            # The slices the last write left (it deleted any others): if they are the ones wanted now, there is
            # nothing stale to look for. A resync looks anyway (someone may have added one).
            known = None if verify or before is None else self._slice_names(*before)
            todo.append((key, resource, svc, known))
        if todo:
            # A few services at a time: each write waits for the apiserver, and 1,000 CRs in a row took minutes.
            with ThreadPoolExecutor(min(PUBLISH_WORKERS, len(todo)), thread_name_prefix="k8s-sink") as pool:
                failures = [f for f in pool.map(lambda item: self._publish_key(*item), todo) if f]
        with self._lock:
            for gone in set(self._written) - set(snapshot.services):
                del self._written[gone]
        if failures:
            raise SinkError(f"{len(failures)} service(s) not written: {'; '.join(failures[:3])}")

    def _publish_key(self, key: str, resource: ModelArtsServiceResource, svc: ServiceSnapshot,
                     known_slices: set[str] | None) -> str | None:
        """Write one service's objects; a failure's text (for the SinkError), or None."""
        with self._lock:
            self._written.pop(key, None)  # until this write has worked
        try:
            self._publish_one(resource, svc, known_slices)
        except ServiceConflict as exc:
            self._set_problem(key, Problem("ServiceConflict", str(exc)))
        except KubeApiError as exc:
            self._set_problem(key, Problem("WriteFailed", f"cannot write the Service or its slices: {exc}"))
            return f"{resource.namespace}/{resource.name}: {exc}"
        else:
            self._set_problem(key, None)
            with self._lock:
                self._written[key] = (resource, svc)
        return None

    def _slice_names(self, resource: ModelArtsServiceResource, svc: ServiceSnapshot) -> set[str] | None:
        slices = self._desired(resource, svc)[1]
        return None if slices is None else {item["metadata"]["name"] for item in slices}

    def _set_problem(self, key: str, problem: Problem | None) -> None:
        with self._lock:
            if problem is None:
                self._problems.pop(key, None)
            else:
                self._problems[key] = problem

    def _apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self._kube.apply(obj, guard=self._guard, stop=self._stop)

    def _check_service_owner(self, resource: ModelArtsServiceResource) -> None:
        """Never take over a Service that another owner (a person, a chart) created under the same name."""
        mark = (resource.namespace, resource.name, resource.uid)
        if mark in self._owned:
            return
        current = self._kube.get(object_path("Service", resource.namespace, resource.name))
        if current is not None:
            refs = (current.get("metadata") or {}).get("ownerReferences") or []
            ours = any(r.get("kind") == "ModelArtsService" and r.get("name") == resource.name for r in refs)
            if not ours:
                raise ServiceConflict(f"Service {resource.namespace}/{resource.name} already exists and is not "
                                      f"owned by this ModelArtsService; rename one of them")
        self._owned.add(mark)

    @staticmethod
    def _desired(resource: ModelArtsServiceResource, svc: ServiceSnapshot) -> tuple[dict[str, Any],
                                                                                     list[dict[str, Any]] | None]:
        """The Service, and its slices once the service has synced (None before)."""
        owner = Owner(resource.name, resource.uid)
        protocol = effective_protocol(resource.spec.protocol, svc.endpoints)  # the same rule as Envoy's
        # spec.loadBalancing travels to sidecars and gateways on the objects they read (controller/objects.py).
        lb = lb_annotation(resource.spec.load_balancing.policy.value, resource.spec.load_balancing.hash_header)
        service = service_manifest(resource.name, resource.namespace, resource.spec.service_id, resource.spec.port,
                                   protocol, resource.spec.service_type == "Headless", owner, lb)
        if not svc.synced:
            return service, None
        return service, endpoint_slices(resource.name, resource.namespace, resource.spec.service_id, svc.endpoints,
                                        protocol, owner, lb)

    def _read_back(self, resources: Iterable[ModelArtsServiceResource]) -> _Live:
        """Our slices with one list per namespace; each Service with a GET (the controller's RBAC has no
        `list` on Services, and asking for it would let it read every Service of the cluster)."""
        live = _Live()
        resources = list(resources)
        for namespace in sorted({r.namespace for r in resources}):
            slices, _ = self._kube.list(collection_path("EndpointSlice", namespace),
                                        label_selector=f"{MANAGED_BY_LABEL}={MANAGED_BY}")
            for item in slices:
                owner = str((item["metadata"].get("labels") or {}).get(SERVICE_NAME_LABEL, ""))
                # The items of a list carry no apiVersion and kind; what we write does.
                item = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", **item}
                live.slices.setdefault((namespace, owner), {})[item["metadata"]["name"]] = item

        def service(resource: ModelArtsServiceResource) -> dict[str, Any] | None:
            return self._kube.get(object_path("Service", resource.namespace, resource.name))

        with ThreadPoolExecutor(PUBLISH_WORKERS, thread_name_prefix="k8s-sink") as pool:
            for resource, found in zip(resources, pool.map(service, resources), strict=True):
                if found is not None:
                    live.services[(resource.namespace, resource.name)] = found
        return live

    def _in_place(self, resource: ModelArtsServiceResource, svc: ServiceSnapshot, live: _Live) -> bool:
        """Whether the apiserver holds every field we would write (it adds its own; those do not count)."""
        if self._legacy:
            return False  # the Endpoints object is not read back: written on every resync, as before
        service, slices = self._desired(resource, svc)
        where = (resource.namespace, resource.name)
        if not _holds(live.services.get(where), service):
            return False
        if slices is None:
            return True
        found = live.slices.get(where, {})
        return set(found) == {s["metadata"]["name"] for s in slices} and \
            all(_holds(found[s["metadata"]["name"]], s) for s in slices)

    def _publish_one(self, resource: ModelArtsServiceResource, svc: ServiceSnapshot,
                     known_slices: set[str] | None = None) -> None:
        owner = Owner(resource.name, resource.uid)
        protocol = effective_protocol(resource.spec.protocol, svc.endpoints)
        self._check_service_owner(resource)
        service, desired = self._desired(resource, svc)
        self._apply(service)
        if desired is None:
            return
        for item in desired:
            self._apply(item)
        names = {item["metadata"]["name"] for item in desired}
        if known_slices == names:
            self._apply_legacy(resource, svc, protocol, owner)
            return
        selector = f"{SERVICE_NAME_LABEL}={resource.name},{MANAGED_BY_LABEL}={MANAGED_BY}"
        existing, _ = self._kube.list(collection_path("EndpointSlice", resource.namespace), label_selector=selector)
        for item in existing:
            name = item["metadata"]["name"]
            if name not in names:
                if not self._guard():
                    return
                self._kube.delete(object_path("EndpointSlice", resource.namespace, name), "EndpointSlice")
                log.info("deleted stale EndpointSlice", extra={"slice": f"{resource.namespace}/{name}"})
        self._apply_legacy(resource, svc, protocol, owner)

    def _apply_legacy(self, resource: ModelArtsServiceResource, svc: ServiceSnapshot, protocol: str,
                      owner: Owner) -> None:
        if self._legacy:
            self._apply(endpoints_manifest(resource, svc.endpoints, protocol, owner))
