"""spec.loadBalancing reaches the sidecars and the gateway: controller -> slice annotation -> sidecar source -> Envoy.

The controller side is the real KubernetesSink (its applies recorded); the sidecar side is the real
KubernetesSource fed those very slices; the Envoy side is the generated config (cluster LB policy,
route hash policy), for a sidecar listener and for the gateway's routes.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from kubernetes import client as k8s

from agent.cli.sidecar_cmd import load_sidecar_config
from agent.config import DiscoveryConfig, LbPolicy
from agent.controller.crd import parse_resource
from agent.controller.sink import KubernetesSink
from agent.envoy.resources import build_resources
from agent.kube import LB_ANNOTATION
from agent.kube.client import KubeClient
from agent.model import Endpoint, ServiceSnapshot
from agent.sinks.xds.views import _as_gateway, ads_source
from agent.snapshot import SnapshotStore
from agent.sources.kubernetes import KubernetesSource
from agent.sources.slices import lb_from_objects
from agent.validation import parse_networks
from tests.unit.test_kube_controller import ApplyRecorder

EPS = (Endpoint("192.168.205.1", 8080), Endpoint("192.168.205.2", 8080))


def controller_objects(load_balancing: dict[str, Any] | None) -> list[dict[str, Any]]:
    spec: dict[str, Any] = {"projectId": "p", "serviceId": "s", "modelartsUrl": "https://m.example.com",
                            "credentialsSecretRef": {"name": "c"}, "protocol": "http"}
    if load_balancing is not None:
        spec["loadBalancing"] = load_balancing
    cr = parse_resource({"metadata": {"name": "chat", "namespace": "apps", "uid": "u1"}, "spec": spec})
    kube = ApplyRecorder()
    svc = ServiceSnapshot(cr.key, cr.spec.service_id, endpoints=EPS, synced=True)
    KubernetesSink(kube, lambda: {cr.key: cr}, lambda: True, threading.Event())._publish_one(cr, svc)
    kube.close()
    return kube.applied


def sidecar(tmp_path: Path, service_yaml: str) -> tuple[SnapshotStore, KubernetesSource, Any]:
    path = tmp_path / "agent.yaml"
    path.write_text(f"services:\n  - name: chat\n    listen_port: 10080\n{service_yaml}")
    config = load_sidecar_config(path, ["chat"])
    store = SnapshotStore(config.services, DiscoveryConfig())
    source = KubernetesSource(KubeClient(k8s.ApiClient(k8s.Configuration())), "apps", config.services[0], store,
                              parse_networks(["192.168.205.0/24"]), 100, threading.Event())
    return store, source, config


def routes_of(listener: Any) -> list[route_pb2.Route]:
    manager = http_connection_manager_pb2.HttpConnectionManager()
    assert listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    return [r for vh in manager.route_config.virtual_hosts for r in vh.routes]


def test_the_controller_announces_load_balancing_on_the_service_and_every_slice() -> None:
    applied = controller_objects({"policy": "ring_hash", "hashHeader": "x-session"})
    kinds = {o["kind"] for o in applied}
    assert kinds == {"Service", "EndpointSlice"}
    for obj in applied:
        assert obj["metadata"]["annotations"][LB_ANNOTATION] == '{"hashHeader":"x-session","policy":"ring_hash"}'
    lb = lb_from_objects(applied, "chat")
    assert lb is not None and lb.policy is LbPolicy.ring_hash and lb.hash_key is not None
    assert lb.hash_key.header == "x-session"


def test_a_sidecar_renders_the_crs_policy_for_its_listener_and_the_gateway(tmp_path: Path) -> None:
    slices = {f"apps/{o['metadata']['name']}": o for o in controller_objects(
        {"policy": "maglev", "hashHeader": "x-user"}) if o["kind"] == "EndpointSlice"}
    store, source, config = sidecar(tmp_path, "")
    version = store.snapshot.version
    source._on_change(slices)
    snapshot = store.snapshot
    assert snapshot.version > version
    spec = source.policy  # what the sidecar hands its sinks (on_policy); the snapshot holds discovery only
    config = config.with_service(spec)
    assert spec.lb.policy is LbPolicy.maglev and spec.lb.hash_key is not None and spec.lb.hash_key.header == "x-user"
    assert snapshot.services["chat"].endpoints == EPS
    built = build_resources(snapshot, config, ads_source)
    [cluster] = built.clusters
    assert cluster.load_balancing_policy.policies[0].typed_extension_config.name == \
        "envoy.load_balancing_policies.maglev"
    [route] = routes_of(built.listeners[0])
    assert [h.header.header_name for h in route.route.hash_policy] == ["x-user"]
    # The gateway view of the same snapshot: its route for the service hashes on the same header.
    gateway = _as_gateway(built, snapshot.services, config)
    routes = [r for vh in gateway.routes[0].virtual_hosts for r in vh.routes]
    assert routes and all([h.header.header_name for h in r.route.hash_policy] == ["x-user"] for r in routes)
    # The same slices again change nothing.
    source._on_change(slices)
    assert store.snapshot.version == snapshot.version


def test_an_lb_written_in_the_sidecar_config_wins_over_the_cr(tmp_path: Path) -> None:
    slices = {f"apps/{o['metadata']['name']}": o for o in controller_objects(
        {"policy": "ring_hash", "hashHeader": "x-user"}) if o["kind"] == "EndpointSlice"}
    _, source, _ = sidecar(tmp_path, "    lb: {policy: round_robin}\n")
    source._on_change(slices)
    assert source.policy.lb.policy is LbPolicy.round_robin


def test_the_default_policy_and_a_bad_annotation() -> None:
    applied = controller_objects(None)
    lb = lb_from_objects(applied, "chat")
    assert lb is not None and lb.policy is LbPolicy.least_request and lb.hash_key is None
    broken = [{"metadata": {"annotations": {LB_ANNOTATION: '{"policy": "fastest"}'}}}]
    assert lb_from_objects(broken, "chat") is None
