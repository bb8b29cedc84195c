"""When nothing changes, the controller writes nothing: no status per poll, no objects per resync.

bench/controller_scale.py measures this at 1,000 CRs; here with the real RBAC of manifests/rbac,
which is what made a resync's read-back fail (no `list` on Services) and rewrite everything.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.kube.conftest import Agents, Cluster, mas, password_secret, vpc_addresses, wait_until
from tests.waiting import unchanged_for

pytestmark = pytest.mark.kube


def writes(controller: Any) -> dict[str, float]:
    """modelarts_agent_k8s_writes_total by kind (successful writes only)."""
    found: dict[str, float] = {}
    for line in controller.admin("/metrics").text.splitlines():
        if line.startswith("modelarts_agent_k8s_writes_total{") and 'result="success"' in line:
            kind = line.split('kind="', 1)[1].split('"', 1)[0]
            found[kind] = found.get(kind, 0.0) + float(line.rsplit(" ", 1)[1])
    return found


def test_polls_and_resyncs_that_find_nothing_new_write_nothing(cluster: Cluster, namespace: str, agents: Agents,
                                                               emulators) -> None:  # type: ignore[no-untyped-def]
    emu = emulators([{"name": "quiet", "service_id": "svc-quiet", "instances": 2, "port": 8080,
                      "bind_addresses": vpc_addresses(71, 2)}])
    # Polled every second, resynced every 2 s: many chances to write in a few seconds.
    controller = agents.controller("c1", namespace, extra=("--resync-seconds", "2"))
    cluster.apply(password_secret(namespace, "creds"), mas(namespace, "quiet", emu, "svc-quiet", "creds"))
    wait_until(lambda: len(cluster.slice_endpoints(namespace, "quiet")) == 2, 20, "slices with the 2 instances")
    wait_until(lambda: cluster.condition(namespace, "quiet", "Ready").get("status") == "True", 10, "Ready=True")
    # The last writes of the sync (status, events) are done: no write for 2 s, with polls every second.
    wait_until(unchanged_for(lambda: writes(controller), 2.0), 20, "the write counters unchanged for 2 s")

    before = writes(controller)
    slice_versions = {s["metadata"]["name"]: s["metadata"]["resourceVersion"]
                      for s in cluster.slices(namespace, "quiet")}
    status_version = cluster.mas(namespace, "quiet")["metadata"]["resourceVersion"]
    time.sleep(8.0)  # several polls and resyncs
    assert writes(controller) == before, (before, writes(controller))
    assert {s["metadata"]["name"]: s["metadata"]["resourceVersion"]
            for s in cluster.slices(namespace, "quiet")} == slice_versions
    assert cluster.mas(namespace, "quiet")["metadata"]["resourceVersion"] == status_version
    assert "cannot read our objects back" not in controller.log()

    # A resync still repairs: a slice deleted by hand comes back.
    name = next(iter(slice_versions))
    cluster.kubectl("delete", "endpointslice", name, "-n", namespace)
    wait_until(lambda: len(cluster.slice_endpoints(namespace, "quiet")) == 2, 15, "the deleted slice to be back")
