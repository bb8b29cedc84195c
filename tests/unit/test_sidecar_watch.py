"""A sidecar follows all its Services over one EndpointSlice watch (agent/sources/kubernetes.py: SliceWatch):
one list, one watch, one thread and one connection per pod instead of one per Service. Each Service's
source still gets exactly its own slices, and only when they changed."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from kubernetes import client as k8s

from agent.app.sidecar import SidecarRuntime
from agent.cli.sidecar_cmd import follow, load_sidecar_config
from agent.config import DataPlaneConfig
from agent.kube.client import KubeClient
from agent.sources.kubernetes import SliceWatch, service_selector


def unreachable() -> KubeClient:
    return KubeClient(k8s.ApiClient(k8s.Configuration(host="http://127.0.0.1:9")))  # never called here


def slice_of(service: str, name: str, address: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "apps", "labels": {"kubernetes.io/service-name": service}},
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": [address], "conditions": {"ready": True}}]}


def test_one_service_keeps_an_equality_selector_several_share_a_set() -> None:
    assert service_selector(["chat"]) == "kubernetes.io/service-name=chat"
    assert service_selector(["llm", "chat", "llm"]) == "kubernetes.io/service-name in (chat,llm)"


def test_each_service_gets_its_own_slices_and_only_when_they_changed() -> None:
    watch = SliceWatch(unreachable(), "apps", ["chat", "llm"], threading.Event())
    seen: dict[str, list[dict[str, Any]]] = {"chat": [], "llm": []}
    watch.subscribe("chat", lambda objects: seen["chat"].append(dict(objects)))
    watch.subscribe("llm", lambda objects: seen["llm"].append(dict(objects)))
    chat_a = slice_of("chat", "chat-a", "10.0.0.1")
    watch._on_change({"apps/chat-a": chat_a})  # the first list: llm has no slices yet, and is told so
    assert seen == {"chat": [{"apps/chat-a": chat_a}], "llm": [{}]}

    llm_a = slice_of("llm", "llm-a", "10.0.1.1")
    watch._on_change({"apps/chat-a": chat_a, "apps/llm-a": llm_a})  # only llm's changed
    assert seen["chat"] == [{"apps/chat-a": chat_a}]
    assert seen["llm"] == [{}, {"apps/llm-a": llm_a}]

    moved = slice_of("chat", "chat-a", "10.0.0.2")
    watch._on_change({"apps/chat-a": moved, "apps/llm-a": llm_a, "apps/other": slice_of("other", "o", "10.9.9.9")})
    assert seen["chat"][-1] == {"apps/chat-a": moved}
    assert len(seen["llm"]) == 2  # a slice of a Service nobody follows reaches no one


def test_a_failing_handler_does_not_starve_the_others_and_gets_the_next_change() -> None:
    watch = SliceWatch(unreachable(), "apps", ["chat", "llm"], threading.Event())
    calls: list[str] = []
    fail = [True]

    def chat(_objects: Any) -> None:
        calls.append("chat")
        if fail[0]:
            raise RuntimeError("boom")

    watch.subscribe("chat", chat)
    watch.subscribe("llm", lambda _objects: calls.append("llm"))
    objects = {"apps/chat-a": slice_of("chat", "chat-a", "10.0.0.1"),
               "apps/llm-a": slice_of("llm", "llm-a", "10.0.1.1")}
    try:
        watch._on_change(objects)
    except RuntimeError:
        pass  # the reflector logs it (its handler-failure log) and goes on
    else:
        raise AssertionError("the handler's failure was swallowed")
    assert calls == ["chat", "llm"]
    fail[0] = False
    watch._on_change(dict(objects))  # nothing changed, but chat never took these slices
    assert calls == ["chat", "llm", "chat"]


def test_the_sidecar_opens_one_watch_for_all_its_services(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text("admin: {port: 0}\nservices:\n" + "".join(
        f"  - name: svc{i}\n    listen_port: {10080 + i}\n" for i in range(3)))

    def load(p: Path) -> DataPlaneConfig:
        return follow(load_sidecar_config(p, []), [])

    runtime = SidecarRuntime(load(path), None, kube=unreachable(), namespace="apps", loader=load,
                             sink_factory=lambda _config: [])
    runtime.start()
    try:
        reflectors = {id(source.reflector) for source in runtime.watches.values()}
        assert len(reflectors) == 1, "one watch per followed Service"
        reflector = runtime.watches["svc0"].reflector
        assert reflector._label_selector == "kubernetes.io/service-name in (svc0,svc1,svc2)"
        # Each Service is still its own source on /status and /readyz.
        assert [s.name for s in runtime.sources] == [f"endpointslices-svc{i}" for i in range(3)]
    finally:
        runtime.stop()
