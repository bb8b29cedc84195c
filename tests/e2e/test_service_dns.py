"""What an app pod sees: `http://<name>.<namespace>.svc.cluster.local` answered by every instance,
through kube-proxy (ClusterIP) and through DNS alone (headless), following scale-out and scale-in."""

from __future__ import annotations

import time

from tests.e2e.conftest import (
    APPS_NS,
    POLL_INTERVAL,
    ClusterEmulator,
    Kube,
    app_pod,
    load,
    mas,
    wait_until,
)

RESOLVE = """\
import json, socket
try:
    print(json.dumps(sorted({{a[4][0] for a in socket.getaddrinfo({name!r}, 80, socket.AF_INET)}})))
except socket.gaierror as exc:
    print(json.dumps(str(exc)))
"""


def endpoint_addresses(kube: Kube, service: str) -> list[str]:
    slices = kube.get_json("endpointslices", "-n", APPS_NS, "-l", f"kubernetes.io/service-name={service}")["items"]
    return sorted(f"{a}:{s['ports'][0]['port']}" for s in slices for e in s.get("endpoints") or []
                  for a in e["addresses"])


def test_clusterip_service_name_reaches_every_instance_and_follows_scaling(
        kube: Kube, emulator: ClusterEmulator, release: str) -> None:
    kube.apply(mas("llm", "svc-llm"))
    instances = emulator.instances("svc-llm")
    wanted = sorted(i["address"] for i in instances)
    wait_until(lambda: endpoint_addresses(kube, "llm") == wanted, 30, "the llm EndpointSlices hold the 3 instances")
    pod = app_pod(kube, "caller")
    url = f"http://llm.{APPS_NS}.svc.cluster.local/"
    result = load(kube, pod, url, seconds=4, workers=4)
    assert result["failed"] == 0, result
    assert sorted(result["by_instance"]) == sorted(i["id"] for i in instances), result

    # Scale out: the new instance answers the Service name within poll interval + a few seconds.
    started = time.monotonic()
    emulator.scale("svc-llm", 4)
    grown = emulator.instances("svc-llm")
    new = {i["id"] for i in grown} - {i["id"] for i in instances}
    assert len(new) == 1
    wait_until(lambda: new <= set(load(kube, pod, url, seconds=1.5, workers=4)["by_instance"]),
               POLL_INTERVAL + 10, "the new instance to answer through the Service")
    seen_after = time.monotonic() - started
    assert seen_after < POLL_INTERVAL + 10 + 6, seen_after  # + the exec round trips of the check itself

    # Scale in: the retired instance gets no more requests.
    emulator.scale("svc-llm", 2)
    kept = {i["id"] for i in emulator.instances("svc-llm") if i["state"] != "stopped"}
    wait_until(lambda: endpoint_addresses(kube, "llm") == sorted(
        i["address"] for i in emulator.instances("svc-llm") if i["state"] != "stopped"),
        POLL_INTERVAL + 10, "the slices to drop the retired instances")
    # kube-proxy programs the slices asynchronously (its sync period): until it has, a connection can still
    # go to the stopped instance, which is kube-proxy's lag, not ours. Measure once a short probe is clean.
    wait_until(lambda: (probe := load(kube, pod, url, seconds=0.5, workers=2))["failed"] == 0
               and set(probe["by_instance"]) <= kept, 30, "kube-proxy to drop the retired instances")
    after = load(kube, pod, url, seconds=3, workers=4)
    assert after["failed"] == 0, after
    assert set(after["by_instance"]) <= kept, (after, kept)


def test_headless_service_name_resolves_to_the_instances(kube: Kube, emulator: ClusterEmulator,
                                                         release: str) -> None:
    kube.apply(mas("llm-hl", "svc-llm-hl", serviceType="Headless"))
    instances = emulator.instances("svc-llm-hl")
    ips = sorted({i["address"].rsplit(":", 1)[0] for i in instances})
    pod = app_pod(kube, "resolver")
    name = f"llm-hl.{APPS_NS}.svc.cluster.local"
    wait_until(lambda: kube.exec_python(APPS_NS, pod, RESOLVE.format(name=name)) == ips, 30,
               f"{name} to resolve to the instance IPs")
    # The search path works too: a pod in the namespace can use the short name.
    assert kube.exec_python(APPS_NS, pod, RESOLVE.format(name="llm-hl")) == ips
    # Every instance answers on the port its EndpointSlice gives (the emulator's instances share one IP).
    for address in endpoint_addresses(kube, "llm-hl"):
        port = address.rsplit(":", 1)[1]
        result = load(kube, pod, f"http://{name}:{port}/", seconds=0.5, workers=1)
        assert result["failed"] == 0 and result["ok"] > 0, result
