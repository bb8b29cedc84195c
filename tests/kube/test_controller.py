"""The controller against a real kube-apiserver, seen through the real kubectl.

The controller runs as its own process with a token of the ServiceAccount from manifests/rbac
(not admin), so every test here also proves that the RBAC there is enough. Instances listen on
192.168.205.x inside the test network namespace (see scripts/vpc-netns).
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from typing import Any

import pytest
from modelarts_emulator.config import DEFAULT_USER

from tests.kube.conftest import (
    RBAC,
    AgentProcess,
    Agents,
    Cluster,
    manifests,
    mas,
    modelarts_calls,
    password_secret,
    unique,
    vpc_addresses,
    wait_until,
)

pytestmark = pytest.mark.kube


def listed(emu: Any, service_id: str) -> set[tuple[str, int]]:
    return {(i.ip, i.port) for i in emu.admin.instances(service_id) if i.listed}


def events(cluster: Cluster, namespace: str, name: str) -> list[tuple[str, str, str]]:
    items = cluster.get_json("events", "-n", namespace, "--field-selector", f"involvedObject.name={name}")["items"]
    return [(e["type"], e["reason"], e["message"]) for e in items]


def test_cr_becomes_service_and_slices_that_follow_scaling(cluster: Cluster, namespace: str, agents: Agents,
                                                           emulators) -> None:  # type: ignore[no-untyped-def]
    # port 0: every instance gets its own port, so every instance its own slice (slices group by port),
    # and a scale-in must delete stale slices.
    emu = emulators([{"name": "llm", "service_id": "svc-llm", "instances": 3, "port": 0,
                      "bind_addresses": vpc_addresses(11, 6)}])
    agents.controller("c1", namespace)
    cluster.apply(password_secret(namespace, "creds"), mas(namespace, "llm", emu, "svc-llm", "creds"))

    wait_until(lambda: cluster.slice_endpoints(namespace, "llm") == listed(emu, "svc-llm"), 20,
               "slices holding the 3 instances")
    assert {ip for ip, _ in listed(emu, "svc-llm")} <= set(vpc_addresses(11, 6))

    # kubectl get mas: the printer columns, with the right values.
    wait_until(lambda: cluster.condition(namespace, "llm", "Synced").get("status") == "True", 10, "Synced=True")
    table = cluster.kubectl("get", "mas", "-n", namespace).stdout.splitlines()
    assert re.split(r"\s{2,}", table[0].strip()) == ["NAME", "SERVICE-ID", "ENDPOINTS", "SYNCED", "AGE"], table
    assert re.split(r"\s{2,}", table[1].strip())[:4] == ["llm", "svc-llm", "3", "True"], table

    # The Service: selectorless ClusterIP, owned by the CR; slices labelled and owned too.
    svc = cluster.get_json("service", "llm", "-n", namespace)
    owner = cluster.mas(namespace, "llm")
    uid = owner["metadata"]["uid"]
    assert svc["spec"]["type"] == "ClusterIP" and svc["spec"]["clusterIP"].startswith("10.96.")
    assert "selector" not in svc["spec"]
    assert [r["uid"] for r in svc["metadata"]["ownerReferences"]] == [uid]
    for item in cluster.slices(namespace, "llm"):
        assert item["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == "modelarts-agent"
        assert [r["uid"] for r in item["metadata"]["ownerReferences"]] == [uid]
        assert all(e["conditions"]["ready"] for e in item["endpoints"])
    # No legacy Endpoints unless asked for.
    assert not cluster.kubectl("get", "endpoints", "llm", "-n", namespace, "--ignore-not-found",
                               "-o", "name").stdout.strip()

    status = owner["status"]
    assert status["observedGeneration"] == owner["metadata"]["generation"]
    assert status["endpointCount"] == 3 and status["lastSyncTime"]
    assert {(e["ip"], e["port"]) for e in status["endpoints"]} == listed(emu, "svc-llm")
    conditions = {c["type"]: c for c in status["conditions"]}
    assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == ("True", "EndpointsAvailable")
    assert conditions["Stale"]["status"] == "False" and conditions["RateLimited"]["status"] == "False"
    assert status["effectivePollIntervalSeconds"] >= 3.0  # one identity: 62 s / 20 calls

    emu.admin.scale("svc-llm", 5)
    wait_until(lambda: len(listed(emu, "svc-llm")) == 5 == len(cluster.slice_endpoints(namespace, "llm"))
               and cluster.slice_endpoints(namespace, "llm") == listed(emu, "svc-llm"), 15, "slices with 5")
    assert len(cluster.slices(namespace, "llm")) == 5
    emu.admin.scale("svc-llm", 2)
    wait_until(lambda: cluster.slice_endpoints(namespace, "llm") == listed(emu, "svc-llm"), 15, "slices with 2")
    assert len(cluster.slices(namespace, "llm")) == 2  # the three stale ones were deleted
    wait_until(lambda: cluster.mas(namespace, "llm")["status"]["endpointCount"] == 2, 10, "endpointCount 2")

    described = cluster.kubectl("describe", "mas", "llm", "-n", namespace).stdout
    assert "EndpointsChanged" in described and "endpoints 5 -> 2" in described, described
    assert "endpoints 0 -> 3" in described, described


def test_bad_crs_report_why_and_leave_the_others_alone(cluster: Cluster, namespace: str, agents: Agents,
                                                      emulators) -> None:  # type: ignore[no-untyped-def]
    emu = emulators([{"name": "good", "service_id": "svc-good", "instances": 2, "port": 8080,
                      "bind_addresses": vpc_addresses(21, 2)}])
    unbound = unique("unbound")  # a namespace that never granted the controller its Secrets
    cluster.kubectl("create", "namespace", unbound)
    agents.controller("c1", None)  # cluster-wide
    foreign = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "taken", "namespace": namespace},
               "spec": {"ports": [{"port": 1234}], "selector": {"app": "someone-else"}}}
    cluster.apply(foreign)
    cluster.apply(
        password_secret(namespace, "creds"), password_secret(unbound, "creds"),
        mas(namespace, "good", emu, "svc-good", "creds"),
        mas(namespace, "taken", emu, "svc-good", "creds"),  # a Service of that name belongs to someone else
        # Passes the CRD schema (isCIDR accepts host bits) but not the controller's strict parse.
        mas(namespace, "bad-cidr", emu, "svc-good", "creds", allowedCIDRs=["192.168.205.1/24"]),
        mas(namespace, "no-secret", emu, "svc-good", "missing"),
        mas(unbound, "forbidden", emu, "svc-good", "creds"),
    )
    expected = {(namespace, "bad-cidr"): "InvalidSpec", (namespace, "no-secret"): "SecretNotFound",
                (unbound, "forbidden"): "SecretForbidden"}

    def reported() -> bool:
        return all(cluster.condition(ns, name, "Ready").get("reason") == reason
                   for (ns, name), reason in expected.items())

    wait_until(reported, 20, "Ready=False with the right reasons")
    wait_until(lambda: cluster.slice_endpoints(namespace, "good") == listed(emu, "svc-good"), 15, "good's slices")
    wait_until(lambda: cluster.condition(namespace, "good", "Ready").get("status") == "True", 10, "good is Ready")
    messages = {key: cluster.condition(*key, "Ready") for key in expected}
    assert "has host bits set" in messages[(namespace, "bad-cidr")]["message"]
    assert messages[(namespace, "no-secret")]["message"] == f"Secret {namespace}/missing does not exist"
    assert "credentials-reader" in messages[(unbound, "forbidden")]["message"]
    for (ns, name), reason in expected.items():
        assert messages[(ns, name)]["status"] == "False"
        assert ("Warning", reason) in [(t, r) for t, r, _ in events(cluster, ns, name)], events(cluster, ns, name)
        assert cluster.kubectl("get", "service", name, "-n", ns, "--ignore-not-found", "-o", "name").stdout == ""
    wait_until(lambda: cluster.condition(namespace, "taken", "Ready").get("reason") == "ServiceConflict", 10,
               "Ready=False, ServiceConflict")
    untouched = cluster.get_json("service", "taken", "-n", namespace)
    assert untouched["spec"]["selector"] == {"app": "someone-else"} and "ownerReferences" not in untouched["metadata"]
    assert not [s for s in cluster.slices(namespace, "taken")  # the endpointslice controller's own slice only
                if s["metadata"]["labels"].get("endpointslice.kubernetes.io/managed-by") == "modelarts-agent"]

    # Fix one: the Secret appears and the CR recovers, without a restart.
    cluster.apply(password_secret(namespace, "missing"))
    wait_until(lambda: cluster.condition(namespace, "no-secret", "Ready").get("status") == "True", 20,
               "no-secret to recover once its Secret exists")
    cluster.kubectl("delete", "namespace", unbound, "--wait=false")


def test_secret_rotation_applies_without_restart(cluster: Cluster, namespace: str, agents: Agents,
                                                 emulators) -> None:  # type: ignore[no-untyped-def]
    emu = emulators([{"name": "rot", "service_id": "svc-rot", "instances": 2, "port": 8080,
                      "bind_addresses": vpc_addresses(31, 2)}])
    controller = agents.controller("c1", namespace)
    cluster.apply(password_secret(namespace, "creds", password="wrong-password"),
                  mas(namespace, "rot", emu, "svc-rot", "creds"))
    wait_until(lambda: cluster.condition(namespace, "rot", "Synced").get("reason") == "AuthFailed", 20,
               "Synced=False, AuthFailed")
    assert ("Warning", "SyncFailed") in [(t, r) for t, r, _ in events(cluster, namespace, "rot")]

    cluster.apply(password_secret(namespace, "creds"))  # the right password now
    wait_until(lambda: cluster.condition(namespace, "rot", "Synced").get("status") == "True", 20, "Synced=True")
    assert cluster.slice_endpoints(namespace, "rot") == listed(emu, "svc-rot")
    assert ("Normal", "SyncRecovered") in [(t, r) for t, r, _ in events(cluster, namespace, "rot")]

    # Rotate to another IAM user: the calls switch users; the new identity starts paced.
    cluster.apply(password_secret(namespace, "creds", user="rotated-user", password="rotated-password"))
    wait_until(lambda: modelarts_calls(emu, user="rotated-user"), 20, "a call as rotated-user")
    switched = emu.admin.now()
    time.sleep(4)
    late = [c for c in modelarts_calls(emu, user=DEFAULT_USER) if c.time > switched + 0.5]
    assert not late, f"calls with the old credentials after the rotation: {late}"
    assert all(c.status == 200 for c in modelarts_calls(emu, user="rotated-user"))
    assert "rotated-password" not in controller.log() and "wrong-password" not in controller.log()


def synced_controller(cluster: Cluster, namespace: str, agents: Agents, emulators: Any, name: str,
                      first_address: int) -> tuple[Any, AgentProcess]:
    """A namespaced controller syncing one CR over 2 instances (room for 5 on the VPC range)."""
    emu = emulators([{"name": name, "service_id": f"svc-{name}", "instances": 2, "port": 8080,
                      "bind_addresses": vpc_addresses(first_address, 5)}])
    controller = agents.controller("c1", namespace)
    cluster.apply(password_secret(namespace, "creds"), mas(namespace, name, emu, f"svc-{name}", "creds"))
    wait_until(lambda: cluster.slice_endpoints(namespace, name) == listed(emu, f"svc-{name}"), 20, "slices with 2")
    return emu, controller


def follows_a_spec_change(cluster: Cluster, namespace: str, name: str) -> None:
    """A spec change made now reaches the Service: the controller's CR watch works."""
    cluster.kubectl("patch", "mas", name, "-n", namespace, "--type=merge", "-p", '{"spec":{"port":9000}}')
    wait_until(lambda: cluster.get_json("service", name, "-n", namespace)["spec"]["ports"][0]["port"] == 9000, 15,
               "the Service port to follow the new spec")


def test_survives_an_apiserver_restart(cluster: Cluster, namespace: str, agents: Agents,
                                       emulators) -> None:  # type: ignore[no-untyped-def]
    emu, controller = synced_controller(cluster, namespace, agents, emulators, "rs", 41)

    cluster.env.restart_apiserver(graceful=False)  # a crash: every watch and connection breaks
    emu.admin.scale("svc-rs", 4)
    wait_until(lambda: cluster.slice_endpoints(namespace, "rs") == listed(emu, "svc-rs"), 30,
               "slices with 4 after the restart")
    wait_until(lambda: cluster.mas(namespace, "rs")["status"]["endpointCount"] == 4, 15, "status after the restart")
    follows_a_spec_change(cluster, namespace, "rs")  # the CR watch reconnected too
    assert controller.alive() and controller.is_leader()


def test_survives_an_etcd_outage_without_losing_endpoints(cluster: Cluster, namespace: str, agents: Agents,
                                                          emulators) -> None:  # type: ignore[no-untyped-def]
    emu, controller = synced_controller(cluster, namespace, agents, emulators, "er", 131)
    good = listed(emu, "svc-er")

    # Read the slices all through the outage: any answer the apiserver gives must still hold every
    # endpoint that was good before (ModelArts only scales out here).
    reads: list[set[tuple[str, int]]] = []
    stop = threading.Event()

    def watch_slices() -> None:
        while not stop.wait(0.3):
            with contextlib.suppress(Exception):  # refused while etcd is down
                reads.append(cluster.slice_endpoints(namespace, "er"))

    reader = threading.Thread(target=watch_slices, daemon=True)
    reader.start()
    try:
        # Longer than the lease duration (6 s): the leader cannot renew and must step down, then lead again.
        threading.Timer(1.0, emu.admin.scale, args=("svc-er", 4)).start()
        cluster.env.restart_etcd(graceful=False, down_for=8.0)
        wait_until(lambda: cluster.slice_endpoints(namespace, "er") == listed(emu, "svc-er"), 30,
                   "slices with 4 after etcd is back")
        wait_until(lambda: cluster.mas(namespace, "er")["status"]["endpointCount"] == 4, 15,
                   "status after the outage")
    finally:
        stop.set()
        reader.join(5)
    assert reads and all(good <= seen for seen in reads), [sorted(r) for r in reads if not good <= r]
    wait_until(controller.is_leader, 20, "the controller to lead again")
    follows_a_spec_change(cluster, namespace, "er")  # its CR watch reconnected
    assert controller.alive() and "Traceback" not in controller.log(), controller.log()[-3000:]


def test_deleting_the_cr_removes_its_objects_and_stops_polling(cluster: Cluster, namespace: str, agents: Agents,
                                                               emulators) -> None:  # type: ignore[no-untyped-def]
    # Runs late in the session on purpose: the garbage collector learns about a new CRD only at its
    # next resource sync (every 30 s), and this test waits for it.
    cluster.apply(*manifests("legacy-endpoints-clusterrole.yaml"))
    try:
        _delete_and_check(cluster, namespace, agents, emulators)
    finally:
        cluster.kubectl("delete", "-f", str(RBAC / "legacy-endpoints-clusterrole.yaml"), check=False)


def _delete_and_check(cluster: Cluster, namespace: str, agents: Agents, emulators) -> None:  # type: ignore[no-untyped-def]
    emu = emulators([{"name": "del", "service_id": "svc-del", "instances": 2, "port": 8080,
                      "bind_addresses": vpc_addresses(51, 2)}])
    agents.controller("c1", namespace, extra=("--legacy-endpoints",))
    cluster.apply(password_secret(namespace, "creds"), mas(namespace, "del", emu, "svc-del", "creds",
                                                          serviceType="Headless"))
    wait_until(lambda: cluster.slice_endpoints(namespace, "del") == listed(emu, "svc-del"), 20, "slices")
    svc = cluster.get_json("service", "del", "-n", namespace)
    assert svc["spec"]["clusterIP"] == "None"
    legacy = wait_until(lambda: cluster.get_json("endpoints", "del", "-n", namespace), 10, "legacy Endpoints")
    assert {a["ip"] for s in legacy["subsets"] for a in s["addresses"]} == {ip for ip, _ in listed(emu, "svc-del")}
    # Labelled skip-mirror: the mirroring controller made no second set of slices.
    assert {s["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"]
            for s in cluster.slices(namespace, "del")} == {"modelarts-agent"}

    cluster.kubectl("delete", "mas", "del", "-n", namespace)
    gone_at = emu.admin.now()

    def leftovers() -> str:
        return cluster.kubectl("get", "services,endpointslices,endpoints", "-n", namespace, "-o", "name").stdout
    wait_until(lambda: leftovers().strip() == "", 60, "the garbage collector to remove Service, slices, Endpoints")
    time.sleep(4)
    late = [c for c in modelarts_calls(emu, service_id="svc-del") if c.time > gone_at + 0.5]
    assert not late, f"still polling a deleted CR: {late}"


def test_manual_edits_are_taken_back(cluster: Cluster, namespace: str, agents: Agents,
                                     emulators) -> None:  # type: ignore[no-untyped-def]
    emu = emulators([{"name": "edit", "service_id": "svc-edit", "instances": 2, "port": 8080,
                      "bind_addresses": vpc_addresses(56, 2)}])
    controller = agents.controller("c1", namespace, extra=("--resync-seconds", "2"))
    cluster.apply(password_secret(namespace, "creds"), mas(namespace, "edit", emu, "svc-edit", "creds"))
    wait_until(lambda: cluster.slice_endpoints(namespace, "edit") == listed(emu, "svc-edit"), 20, "slices")
    name = cluster.slices(namespace, "edit")[0]["metadata"]["name"]

    # Someone else takes the endpoints over with a forced server-side apply of their own.
    intruder = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                "metadata": {"name": name, "namespace": namespace},
                "endpoints": [{"addresses": ["192.168.205.250"], "conditions": {"ready": True}}]}
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=intruder", "-f", "-",
                    input=json.dumps(intruder))
    assert ("192.168.205.250", 8080) in cluster.slice_endpoints(namespace, "edit")
    wait_until(lambda: cluster.slice_endpoints(namespace, "edit") == listed(emu, "svc-edit"), 15,
               "the controller to take its slice back")
    metrics = controller.admin("/metrics").text
    conflicts = [line for line in metrics.splitlines()
                 if line.startswith('modelarts_agent_k8s_conflicts_total{kind="EndpointSlice"}')]
    assert conflicts and float(conflicts[0].rsplit(" ", 1)[1]) >= 1, conflicts
    assert "modelarts_agent_leader 1.0" in metrics

    # A slice deleted by hand comes back at the next resync.
    cluster.kubectl("delete", "endpointslice", name, "-n", namespace)
    wait_until(lambda: cluster.slice_endpoints(namespace, "edit") == listed(emu, "svc-edit"), 15,
               "the deleted slice to be recreated")
