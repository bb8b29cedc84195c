"""A watch that expires (410 Gone) on a real kube-apiserver, then a relist that loses nothing.

The shared test apiserver answers old resourceVersions from its watch cache, so it never says 410 in
a short test. This module starts its own control plane with the watch cache off: watches then go to
etcd, and compacting etcd past the reflector's resourceVersion makes its next watch fail with 410
exactly as a long-lived watch does in a busy cluster. Changes made while the watch is broken must
show up after the relist, and the expiry is counted as `reason="gone"`, not as an error.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.kube.client import KubeClient
from agent.kube.metrics import K8S_WATCH_RESTARTS
from agent.kube.watch import Objects, Reflector
from tests.kube.conftest import wait_until
from tests.kubeenv import KubeTestEnv

pytestmark = pytest.mark.kube

NAMESPACE = "expiry"


@pytest.fixture(scope="module")
def etcd_backed_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeTestEnv]:
    env = KubeTestEnv(tmp_path_factory.mktemp("kubeenv-nocache"), controllers=("serviceaccount",),
                      extra_apiserver_args=("--watch-cache=false",))
    env.start()
    try:
        env.kubectl("create", "namespace", NAMESPACE)
        yield env
    finally:
        env.stop()


def etcd_post(env: KubeTestEnv, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(env.etcd_url + path, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:  # loopback etcd of this test
        return json.loads(response.read())  # type: ignore[no-any-return]


def compact_etcd(env: KubeTestEnv) -> int:
    """Compact etcd at its current revision: every older resourceVersion is gone for watches."""
    revision = int(etcd_post(env, "/v3/kv/range", {"key": "AA=="})["header"]["revision"])
    etcd_post(env, "/v3/kv/compaction", {"revision": revision, "physical": True})
    return revision


def endpoint_slice(name: str, ip: str) -> str:
    return json.dumps({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"kubernetes.io/service-name": "llm"}},
        "endpoints": [{"addresses": [ip]}], "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    })


def gone_restarts(name: str) -> float:
    return K8S_WATCH_RESTARTS.labels(name, "gone")._value.get()


def test_expired_watch_relists_and_keeps_every_change(etcd_backed_env: KubeTestEnv, tmp_path: Path) -> None:
    env = etcd_backed_env
    env.kubectl("apply", "-f", "-", input=endpoint_slice("llm-a", "192.168.205.10"))
    seen: list[set[str]] = []
    stop = threading.Event()
    kube = KubeClient.connect(env.kubeconfig_path)
    # A network partition on the reflector's side only: while `open_` is clear its next watch request
    # waits, as one stuck behind a dead connection would. The apiserver and etcd stay real.
    open_, blocked = threading.Event(), threading.Event()
    open_.set()
    real_watch = kube.watch

    def partitioned_watch(*args: Any, **kwargs: Any) -> Any:
        if not open_.is_set():
            blocked.set()
            open_.wait(60)
        return real_watch(*args, **kwargs)

    kube.watch = partitioned_watch  # type: ignore[method-assign]
    # Short server-side timeouts: the reflector re-watches from its last resourceVersion every ~2 s.
    reflector = Reflector(kube, f"/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices",
                          "endpointslices-expiry", lambda objects: seen.append(names(objects)), stop,
                          label_selector="kubernetes.io/service-name=llm", timeout_seconds=2).start()
    try:
        assert reflector.synced.wait(20), reflector.last_error
        assert reflector.items().keys() == {f"{NAMESPACE}/llm-a"}
        before = gone_restarts("endpointslices-expiry")

        open_.clear()
        wait_until(blocked.is_set, 10, "the reflector's current watch to end (server timeout ~2 s)")
        # While it cannot watch: one slice added, the first one deleted, and etcd compacted past both,
        # so the events are gone for good and only a relist can find the new state.
        env.kubectl("apply", "-f", "-", input=endpoint_slice("llm-b", "192.168.205.11"))
        env.kubectl("delete", "endpointslice", "llm-a", "-n", NAMESPACE)
        for i in range(3):
            env.kubectl("create", "configmap", f"filler-{i}", "-n", "default")
        compact_etcd(env)
        assert reflector.items().keys() == {f"{NAMESPACE}/llm-a"}  # still the last-known state
        open_.set()

        wait_until(lambda: gone_restarts("endpointslices-expiry") > before, 20, "a 410 Gone and a relist")
        wait_until(lambda: reflector.items().keys() == {f"{NAMESPACE}/llm-b"}, 20,
                   "the relisted state: llm-b only")
        # The expiry is routine: no error is left on the reflector, and it keeps following changes.
        assert reflector.last_error is None
        env.kubectl("apply", "-f", "-", input=endpoint_slice("llm-c", "192.168.205.12"))
        wait_until(lambda: reflector.items().keys() == {f"{NAMESPACE}/llm-b", f"{NAMESPACE}/llm-c"}, 20,
                   "llm-c after the relist")
        # The handler never saw an empty set: a relist replaces the state in one step.
        assert all(seen_names for seen_names in seen), seen
    finally:
        stop.set()
        reflector.thread.join(10)
        kube.close()


def names(objects: Objects) -> set[str]:
    return set(objects)
