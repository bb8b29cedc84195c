"""`helm install` with the project's image: both controller replicas Ready, one holds the Lease, the
hand-over when the leader pod is deleted, and what a user reads with kubectl."""

from __future__ import annotations

import re
import time

from tests.e2e.conftest import (
    APPS_NS,
    SYSTEM_NS,
    ClusterEmulator,
    Kube,
    controller_selector,
    lease_holder,
    mas,
    wait_until,
)


def test_both_controller_replicas_run_the_image_and_one_holds_the_lease(kube: Kube, release: str) -> None:
    pods = kube.wait_ready(SYSTEM_NS, controller_selector(), 2)
    for pod in kube.pods(SYSTEM_NS, controller_selector()):
        image = pod["status"]["containerStatuses"][0]["image"]
        assert "modelarts-agent" in image, image
    holder = wait_until(lambda: lease_holder(kube), 30, "a leader")
    assert any(holder.startswith(p) for p in pods), (holder, pods)


def test_kubectl_shows_what_was_synced(kube: Kube, emulator: ClusterEmulator, release: str) -> None:
    kube.apply(mas("shown", "svc-gw-a"))
    wait_until(lambda: "True" in kube.kubectl("get", "mas", "shown", "-n", APPS_NS, "-o",
                                              "jsonpath={.status.conditions[?(@.type=='Synced')].status}").stdout,
               40, "the shown ModelArtsService to be Synced")
    listed = kube.kubectl("get", "mas", "-A").stdout
    print("\n$ kubectl get mas -A\n" + listed)
    header = listed.splitlines()[0].split()
    for column in ("NAMESPACE", "NAME", "SERVICE-ID", "ENDPOINTS", "SYNCED", "AGE"):
        assert column in header, listed
    row = next(line.split() for line in listed.splitlines() if " shown " in f" {line} ")
    assert row[0] == APPS_NS and "svc-gw-a" in row and "True" in row, listed
    assert "2" in row, listed  # two endpoints
    described = kube.kubectl("describe", "mas", "shown", "-n", APPS_NS).stdout
    for text in ("svc-gw-a", "Synced", "Ready"):
        assert text in described, described
    events = kube.kubectl("get", "events", "-n", APPS_NS, "--field-selector",
                          "involvedObject.kind=ModelArtsService,involvedObject.name=shown").stdout
    assert re.search(r"Synced|Endpoints", events), events


def test_deleting_the_leader_pod_hands_the_lease_to_the_standby(kube: Kube, emulator: ClusterEmulator,
                                                                 release: str) -> None:
    pods = kube.wait_ready(SYSTEM_NS, controller_selector(), 2)
    holder = wait_until(lambda: lease_holder(kube), 30, "a leader")
    leader = next(p for p in pods if holder.startswith(p))
    standby = next(p for p in pods if p != leader)
    started = time.monotonic()
    kube.kubectl("delete", "pod", "-n", SYSTEM_NS, leader, "--wait=false")
    new_holder = wait_until(lambda: (h := lease_holder(kube)) and h != holder and h, 40,
                            "the Lease to move to the standby")
    handover = time.monotonic() - started
    taker = "the standby" if new_holder.startswith(standby) else "the replacement pod"
    print(f"\n[e2e] leader hand-over after deleting the leader pod: {handover:.1f}s (to {taker})")
    # A graceful leader releases the Lease: the standby, or the pod that replaces the deleted one if
    # it starts first, takes it at once. Never the pod that is going away.
    assert not new_holder.startswith(leader), (new_holder, leader)
    assert handover < 15, handover  # the lease duration: a graceful leader releases the Lease at once
    # The new leader keeps syncing: a new ModelArtsService gets its endpoints.
    kube.apply(mas("after-handover", "svc-gw-b"))
    wait_until(lambda: kube.get_json("endpointslices", "-n", APPS_NS, "-l",
                                     "kubernetes.io/service-name=after-handover")["items"], 40,
               "the new leader to sync a new ModelArtsService")
    kube.wait_ready(SYSTEM_NS, controller_selector(), 2)
