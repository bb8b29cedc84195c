"""What the controller writes to the apiserver when little changes (bench/controller_scale.py measures it at scale).

The Kubernetes sink gets the whole snapshot on every change; with 1,000 ModelArtsServices, re-applying
every Service and its slices each time one service's endpoints moved cost ~3,000 requests per poll.
"""

from __future__ import annotations

import copy
import threading
import time
from types import MappingProxyType
from typing import Any

from agent.controller.crd import ModelArtsServiceResource, parse_resource
from agent.controller.pipeline import Pipeline, PipelineSettings
from agent.controller.sink import KubernetesSink
from agent.kube.client import EventRecorder
from agent.model import Endpoint, ServiceSnapshot, Snapshot
from tests.unit.test_kube_controller import ApplyRecorder

EPS = (Endpoint("192.168.205.1", 8080), Endpoint("192.168.205.2", 8080))


def resource(name: str) -> ModelArtsServiceResource:
    return parse_resource({"metadata": {"name": name, "namespace": "apps", "uid": f"uid-{name}"},
                           "spec": {"projectId": "p", "serviceId": f"id-{name}", "modelartsUrl": "https://m.example.com",
                                    "credentialsSecretRef": {"name": "c"}}})


def snapshot(version: int, services: dict[str, ServiceSnapshot]) -> Snapshot:
    return Snapshot(version=version, services=MappingProxyType(services))


def synced(crs: dict[str, ModelArtsServiceResource], endpoints: tuple[Endpoint, ...] = EPS,
           only: str | None = None) -> dict[str, ServiceSnapshot]:
    """Every CR (or just `only`) synced with `endpoints`."""
    return {key: ServiceSnapshot(key, r.spec.service_id, endpoints, synced=True) for key, r in crs.items()
            if only is None or key == only}


def sink_over(kube: ApplyRecorder, count: int) -> tuple[dict[str, ModelArtsServiceResource], KubernetesSink]:
    """`count` CRs (svc-0, svc-1, ...) and a Kubernetes sink writing them through `kube`."""
    crs = {r.key: r for r in (resource(f"svc-{i}") for i in range(count))}
    return crs, KubernetesSink(kube, lambda: crs, lambda: True, threading.Event())


def moved(services: dict[str, ServiceSnapshot], crs: dict[str, ModelArtsServiceResource],
          key: str = "apps--svc-0") -> dict[str, ServiceSnapshot]:
    """`services` with `key`'s endpoints down to the first one."""
    return {**services, **synced(crs, EPS[:1], only=key)}


def written_services(applied: list[dict[str, object]]) -> set[str]:
    names = set()
    for obj in applied:
        meta = obj["metadata"]
        assert isinstance(meta, dict)
        labels = meta.get("labels") or {}
        names.add(str(meta["name"]) if obj["kind"] == "Service" else str(labels["kubernetes.io/service-name"]))
    return names


def test_a_snapshot_change_rewrites_only_the_services_that_changed() -> None:
    kube = ApplyRecorder()
    crs, sink = sink_over(kube, 3)
    services = synced(crs)
    sink.publish(snapshot(1, services))
    assert written_services(kube.applied) == {"svc-0", "svc-1", "svc-2"}

    kube.applied.clear()
    sink.publish(snapshot(2, moved(services, crs)))
    assert written_services(kube.applied) == {"svc-0"}

    # The same content again (a republish) writes nothing.
    kube.applied.clear()
    sink.publish(snapshot(3, moved(services, crs)))
    assert kube.applied == []
    kube.close()


def test_a_changed_cr_is_rewritten_even_when_its_endpoints_are_the_same() -> None:
    kube = ApplyRecorder()
    crs, sink = sink_over(kube, 1)
    key = "apps--svc-0"
    services = synced(crs)
    sink.publish(snapshot(1, services))
    kube.applied.clear()
    changed = parse_resource({"metadata": {"name": "svc-0", "namespace": "apps", "uid": "uid-svc-0", "generation": 2},
                              "spec": {"projectId": "p", "serviceId": "id-svc-0", "modelartsUrl": "https://m.example.com",
                                       "credentialsSecretRef": {"name": "c"}, "port": 9000}})
    crs[key] = changed
    sink.publish(snapshot(1, services))
    assert written_services(kube.applied) == {"svc-0"}
    kube.close()


class StoredObjects(ApplyRecorder):
    """Keeps what was applied (with fields the apiserver adds), lists it back by namespace and labels."""

    def __init__(self) -> None:
        super().__init__()
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}

    def apply(self, obj: dict[str, Any], **_kwargs: Any) -> dict[str, Any]:
        stored = copy.deepcopy(obj)
        stored["metadata"]["resourceVersion"] = str(len(self.applied) + 1)  # what the apiserver adds
        if obj["kind"] == "Service":
            stored["spec"]["clusterIP"] = "10.96.0.10"
            stored["spec"]["ports"][0]["targetPort"] = stored["spec"]["ports"][0]["port"]
        meta = obj["metadata"]
        self.objects[(obj["kind"], meta["namespace"], meta["name"])] = stored
        return super().apply(obj)

    def get(self, path: str, timeout: float | None = None) -> dict[str, Any] | None:
        namespace, name = path.split("/namespaces/")[1].split("/")[0], path.rsplit("/", 1)[1]
        return copy.deepcopy(self.objects.get(("Service", namespace, name)))

    def list(self, path: str, label_selector: str | None = None,
             field_selector: str | None = None) -> tuple[list[dict[str, Any]], str]:
        kind = "Service" if path.endswith("/services") else "EndpointSlice"
        namespace = path.split("/namespaces/")[1].split("/")[0]
        wanted = dict(term.split("=", 1) for term in (label_selector or "").split(",") if term)
        found = [copy.deepcopy(o) for (k, ns, _), o in self.objects.items() if k == kind and ns == namespace and
                 all((o["metadata"].get("labels") or {}).get(lk) == lv for lk, lv in wanted.items())]
        for item in found:  # as a real list answers: the items carry no apiVersion and kind
            del item["apiVersion"], item["kind"]
        return found, "1"

    def delete(self, path: str, kind: str) -> bool:
        namespace, name = path.split("/namespaces/")[1].split("/")[0], path.rsplit("/", 1)[1]
        return self.objects.pop((kind, namespace, name), None) is not None


def test_a_resync_rewrites_only_what_drifted() -> None:
    # The resync repairs manual edits; re-applying every object unread was ~2,000 no-op writes every 5 minutes
    # at 1,000 CRs (bench/controller_scale.py). It reads our objects back (two lists per namespace) instead.
    kube = StoredObjects()
    crs, sink = sink_over(kube, 3)
    services = synced(crs)
    sink.publish(snapshot(1, services))

    kube.applied.clear()
    sink.forget()
    sink.publish(snapshot(2, services))
    assert kube.applied == []  # nothing drifted: no write at all

    # Someone deletes svc-1's slice and edits svc-2's Service: those two are written again, svc-0 is not.
    del kube.objects[next(k for k in kube.objects if k[0] == "EndpointSlice" and k[2].startswith("svc-1"))]
    kube.objects[("Service", "apps", "svc-2")]["spec"]["ports"][0]["port"] = 1
    sink.forget()
    sink.publish(snapshot(3, services))
    assert written_services(kube.applied) == {"svc-1", "svc-2"}
    sink.forget()
    kube.applied.clear()
    sink.publish(snapshot(4, services))
    assert kube.applied == []  # repaired
    kube.close()


def test_a_status_only_change_of_the_crs_triggers_no_reconcile() -> None:
    # Every status write comes back through the CR watch; at 1,000 CRs each of those re-parsed every CR and
    # rebuilt every group's config, which kept a syncing controller's CPU busy (bench/controller_scale.py).
    kube = ApplyRecorder()
    pipeline = Pipeline(kube, PipelineSettings(), lambda: True, EventRecorder(kube, "test", "me"))
    cr = {"metadata": {"name": "svc-0", "namespace": "apps", "uid": "u1", "generation": 1, "resourceVersion": "5"},
          "spec": {"projectId": "p", "serviceId": "id-0", "modelartsUrl": "https://m.example.com",
                   "credentialsSecretRef": {"name": "c"}}}
    try:
        pipeline.submit({"apps/svc-0": cr})
        assert pipeline._dirty.is_set()  # the first set is always reconciled
        pipeline._dirty.clear()
        with_status = {**cr, "metadata": {**cr["metadata"], "resourceVersion": "6"}, "status": {"endpointCount": 2}}
        pipeline.submit({"apps/svc-0": with_status})
        assert not pipeline._dirty.is_set()
        assert pipeline._crs["apps/svc-0"]["status"] == {"endpointCount": 2}  # the status writer sees it
        new_spec = {**with_status, "metadata": {**with_status["metadata"], "generation": 2},
                    "spec": {**cr["spec"], "serviceId": "id-1"}}
        pipeline.submit({"apps/svc-0": new_spec})
        assert pipeline._dirty.is_set()
        pipeline._dirty.clear()
        pipeline.submit({})  # a deleted CR is reconciled too
        assert pipeline._dirty.is_set()
    finally:
        pipeline.close(timeout=1)
        kube.close()


class SlowApiServer(StoredObjects):
    """Each write takes a while (an apiserver's round trip); counts how many were in flight at once, and lists."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = 0
        self.most_in_flight = 0
        self.lists = 0
        self._count = threading.Lock()

    def apply(self, obj: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        with self._count:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        time.sleep(0.02)
        with self._count:
            self.in_flight -= 1
            return super().apply(obj, **kwargs)

    def list(self, path: str, label_selector: str | None = None,
             field_selector: str | None = None) -> tuple[list[dict[str, Any]], str]:
        with self._count:
            self.lists += 1
            return super().list(path, label_selector, field_selector)


def test_services_are_written_a_few_at_a_time_and_stale_slices_looked_for_once() -> None:
    # 1,000 CRs written one request after another took minutes to sync (bench/controller_scale.py).
    kube = SlowApiServer()
    crs, sink = sink_over(kube, 8)
    services = synced(crs)
    sink.publish(snapshot(1, services))
    assert written_services(kube.applied) == {f"svc-{i}" for i in range(8)}
    assert kube.most_in_flight > 1
    assert kube.lists == 8  # the first write of each service looks for stale slices

    # New endpoints in the same slice: written again, with no list (the last write left exactly that slice).
    kube.lists = 0
    sink.publish(snapshot(2, moved(services, crs)))
    assert kube.lists == 0
    [endpoints] = [o["endpoints"] for k, o in kube.objects.items() if k[0] == "EndpointSlice" and "svc-0" in k[2]]
    assert [e["addresses"] for e in endpoints] == [["192.168.205.1"]]
    kube.close()
