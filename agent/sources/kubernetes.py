"""The `kubernetes` source: endpoints from the EndpointSlices that the controller wrote for a Service.

This is what sidecars use, so 100 app pods cost the ModelArts API nothing: they never talk to
ModelArts (the source has no client and no credentials), they only watch their namespace's
slices (label `kubernetes.io/service-name`). The addresses are checked again against the
allowed CIDRs before they enter the store: a slice is just an object that anyone with write
access to EndpointSlices could have edited.

The CR's load balancing, announced on the slices, is policy, not discovery data: it goes to
`on_policy` (the sidecar hands it to its sinks' config), never into the snapshot.

A sidecar follows all its Services over one `SliceWatch`: one list and one watch of the namespace's
slices with a set-based selector (`kubernetes.io/service-name in (a,b,...)`), so the apiserver holds
one watch per pod, not one per Service, and the pod one thread and one TLS connection (each watch
of its own cost ~0.2 MiB of RSS and re-opened its stream every minute). Each Service's source still
is its own `Source` (its /status entry, its store updates); it gets its Service's slices only when they
changed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agent.config import LoadBalancing, ServicePolicy
from agent.errors import DiscoveryError
from agent.kube import SERVICE_NAME_LABEL
from agent.kube.client import KubeClient, collection_path
from agent.kube.watch import Reflector
from agent.metrics import ENDPOINTS_REJECTED
from agent.model import SCHEMAS, Endpoint, Schema
from agent.snapshot import SnapshotStore
from agent.sources.slices import endpoints_from_slices, lb_from_objects, with_announced_lb
from agent.validation import IPNetwork, Rejection, check_ip, check_port

log = logging.getLogger(__name__)

_APP_PROTOCOLS: dict[str, Schema] = {"http": "http", "https": "https", "kubernetes.io/h2c": "grpc"}


def slice_schema(spec_protocol: str, slices: Sequence[Mapping[str, Any]]) -> Schema:
    """The protocol the config names, else what the controller put on the slice ports."""
    if spec_protocol in SCHEMAS:
        return spec_protocol  # type: ignore[return-value]
    for item in slices:
        for port in item.get("ports") or []:
            app = _APP_PROTOCOLS.get(str(port.get("appProtocol") or ""))
            if app:
                return app
            if port.get("name") in SCHEMAS:
                return port["name"]  # type: ignore[no-any-return]
    return "http"


def service_selector(services: Sequence[str]) -> str:
    """The label selector of the slices of these Services (one: an equality, several: a set)."""
    names = sorted(set(services))
    if len(names) == 1:
        return f"{SERVICE_NAME_LABEL}={names[0]}"
    return f"{SERVICE_NAME_LABEL} in ({','.join(names)})"


SliceHandler = Callable[[Mapping[str, dict[str, Any]]], None]


class SliceWatch:
    """One reflector over the EndpointSlices of several Services of a namespace; each Service's handler
    gets that Service's slices (key -> object), at the first list and then whenever they changed."""

    def __init__(self, kube: KubeClient, namespace: str, services: Sequence[str], stop: threading.Event,
                 name: str = "endpointslices") -> None:
        self._handlers: dict[str, SliceHandler] = {}
        self._delivered: dict[str, dict[str, dict[str, Any]]] = {}  # what each handler last took
        self._start_lock = threading.Lock()
        self._started = False
        self.reflector = Reflector(kube, collection_path("EndpointSlice", namespace), name, self._on_change, stop,
                                   label_selector=service_selector(services))

    def subscribe(self, service: str, handler: SliceHandler) -> None:
        self._handlers[service] = handler

    def start(self) -> None:
        """Starts the one reflector thread; every source that shares it calls this."""
        with self._start_lock:
            if not self._started:
                self._started = True
                self.reflector.start()

    def _on_change(self, objects: Mapping[str, dict[str, Any]]) -> None:
        by_service: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in self._handlers}
        for key, obj in objects.items():
            name = ((obj.get("metadata") or {}).get("labels") or {}).get(SERVICE_NAME_LABEL)
            if name in by_service:
                by_service[name][key] = obj
        failed: Exception | None = None
        for name, subset in by_service.items():
            if self._delivered.get(name) == subset:
                continue  # another Service's slice changed
            try:
                self._handlers[name](subset)
            except Exception as exc:  # the others still get theirs; the reflector logs it, the next change retries
                failed = failed or exc
                continue
            self._delivered[name] = subset
        if failed is not None:
            raise failed


class KubernetesSource:
    def __init__(self, kube: KubeClient, namespace: str, spec: ServicePolicy, store: SnapshotStore,
                 allowed: tuple[IPNetwork, ...], max_endpoints: int, stop: threading.Event,
                 on_policy: Callable[[ServicePolicy], None] | None = None, watch: SliceWatch | None = None) -> None:
        self.spec = spec
        # The service's policy as rendered: the config's, with the CR's announced load balancing.
        self.policy = spec
        self._announced: LoadBalancing | None = None
        self._policy_lock = threading.Lock()
        self._on_policy = on_policy
        self._store = store
        self._allowed = allowed
        self._max = max_endpoints
        self._seen_endpoints: set[str] = set()
        # Its own watch unless it shares one (the sidecar's SliceWatch of all its Services).
        self._watch = watch or SliceWatch(kube, namespace, [spec.name], stop, f"endpointslices-{spec.name}")
        self._watch.subscribe(spec.name, self._on_change)
        self.reflector = self._watch.reflector
        # Its face as a `Source` (agent/sources/__init__.py), for the composition root's status and /readyz.
        self._stop = stop
        self.name = f"endpointslices-{spec.name}"
        self.description = f"the EndpointSlice watch of Service {spec.name}"

    def reconfigure(self, spec: ServicePolicy) -> ServicePolicy:
        """A reloaded config's spec for this service; returns the policy to render (the CR's LB re-applied)."""
        with self._policy_lock:
            self.spec = spec
            self.policy = with_announced_lb(spec, self._announced)
            return self.policy

    def start(self) -> KubernetesSource:
        self._watch.start()
        return self

    def stop(self) -> None:
        # Not joined: a watch may block in its stream until the client is closed, which ends it.
        self._stop.set()

    def alive(self) -> bool:
        return self.reflector.thread.is_alive()

    @property
    def last_error(self) -> str | None:
        return self.reflector.last_error

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "kubernetes", "alive": self.alive(), "last_error": self.last_error,
                "synced": self.reflector.synced.is_set()}

    def _validated(self, candidates: Sequence[Endpoint]) -> tuple[list[Endpoint], int]:
        accepted: list[Endpoint] = []
        rejected = 0
        for endpoint in candidates:
            problem = next((r for r in (check_ip(endpoint.ip, self._allowed), check_port(endpoint.port))
                            if isinstance(r, Rejection)), None)
            if problem is not None:
                rejected += 1
                ENDPOINTS_REJECTED.labels(self.spec.name, problem.reason).inc()
                log.warning("dropped EndpointSlice address: %s", problem.detail,
                            extra={"service": self.spec.name, "reason": problem.reason})
                continue
            accepted.append(endpoint)
        return accepted[:self._max], rejected

    def _on_change(self, objects: Mapping[str, dict[str, Any]]) -> None:
        slices = list(objects.values())
        # The ModelArtsService's spec.loadBalancing, announced on the slices (unless this config sets lb).
        with self._policy_lock:
            self._announced = lb_from_objects(slices, self.spec.name)
            policy = with_announced_lb(self.spec, self._announced)
            changed, self.policy = policy != self.policy, policy
        if changed and self._on_policy is not None:
            self._on_policy(policy)
        candidates = endpoints_from_slices(slices, slice_schema(self.spec.protocol, slices))
        accepted, rejected = self._validated(candidates)
        name = self.spec.name
        if accepted:
            self._store.record_endpoints(name, tuple(sorted(accepted)), rejected=rejected)
        elif candidates:
            self._store.record_failure(name, DiscoveryError(
                f"all {len(candidates)} addresses in the EndpointSlices were rejected", kind="all_rejected"))
        elif name in self._seen_endpoints:
            # The controller already applied the last-known-good rules: an empty set is meant.
            self._store.record_empty(name, "stopped", reason="the controller's EndpointSlices list no endpoints "
                                                             "(its ModelArtsService status says why)")
        # No slices and never any: the controller has not synced yet (or the service is empty);
        # stay "not synced" so /readyz tells the truth.
        if accepted:
            self._seen_endpoints.add(name)
