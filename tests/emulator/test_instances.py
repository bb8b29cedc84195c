"""Fake instances: real servers on their own IPs that can be killed, scaled, slowed, failed."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from modelarts_emulator import Emulator, EmulatorAdminError, EmulatorConfig, ServiceConfig
from modelarts_emulator.config import DEFAULT_PROJECT_ID, LatencyConfig

HTTP = ServiceConfig(name="svc-http", instances=2)
QUEUED = ServiceConfig(name="svc-queued", instances=1, concurrency=1, latency=LatencyConfig(base_ms=200))
HTTPS = ServiceConfig(name="svc-https", schema="https", instances=1)
TCP = ServiceConfig(name="svc-tcp", schema="tcp", instances=1)
PINNED = ServiceConfig(name="svc-pinned", instances=1, bind_addresses=["127.0.0.201", "127.0.0.202"])


@pytest.fixture(scope="module")
def emu():
    with Emulator(EmulatorConfig(services=[HTTP, QUEUED, HTTPS, TCP, PINNED])) as running:
        yield running


@pytest.fixture(scope="module")
def session():
    with requests.Session() as s:
        s.trust_env = False
        yield s


def listed(emu, svc):
    """The endpoints as the ModelArts API lists them (AK/SK-free: admin view of listed instances)."""
    return [(i.ip, i.port) for i in emu.admin.instances(svc.service_id) if i.listed]


def api_endpoints(emu, svc):
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": "demo-user", "password": "demo-password", "domain": {"name": "demo-domain"}}}},
        "scope": {"project": {"name": "cn-north-4"}}}}
    token = requests.post(emu.iam_url + "/v3/auth/tokens", json=body, timeout=5).headers["X-Subject-Token"]
    url = f"{emu.modelarts_url}/v1/{DEFAULT_PROJECT_ID}/services/{svc.service_id}/predict/endpoints"
    resp = requests.get(url, params={"type": "host_endpoints"}, headers={"X-Auth-Token": token}, timeout=5)
    assert resp.status_code == 200, resp.text
    return [(e["ip"], e["port"]) for e in resp.json()["endpoints"]]


def refused(ip, port):
    try:
        with socket.create_connection((ip, port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def test_each_instance_on_its_own_loopback_ip(emu, session):
    endpoints = api_endpoints(emu, HTTP)
    assert len(endpoints) == 2 and len({ip for ip, _ in endpoints}) == 2
    for ip, port in endpoints:
        assert ip.startswith("127.0.0.") and ip != "127.0.0.1"
        body = session.post(f"http://{ip}:{port}/v1/predict", json={"x": 1}, timeout=5).json()
        assert body["address"] == f"{ip}:{port}" and body["path"] == "/v1/predict" and body["method"] == "POST"
        assert body["service_id"] == HTTP.service_id and body["instance_id"].startswith("svc-http-")
    assert api_endpoints(emu, PINNED)[0][0] == "127.0.0.201"


def test_kill_refuses_connections_but_stays_listed(emu, session):
    inst = emu.admin.instances(HTTP.service_id)[0]
    assert emu.admin.kill(inst.instance_id).state == "killed"
    assert refused(inst.ip, inst.port)
    assert (inst.ip, inst.port) in api_endpoints(emu, HTTP)
    revived = emu.admin.revive(inst.instance_id)
    assert revived.state == "running" and revived.port == inst.port
    assert session.get(f"http://{inst.address}/x", timeout=5).status_code == 200


def test_kill_drops_open_connections(emu):
    inst = emu.admin.instances(HTTP.service_id)[1]
    emu.admin.set_latency(inst.instance_id, base_ms=3000)
    errors = []

    def slow_request():
        try:
            requests.get(f"http://{inst.address}/slow", timeout=10)
        except requests.ConnectionError as exc:
            errors.append(exc)

    thread = threading.Thread(target=slow_request)
    thread.start()
    time.sleep(0.3)
    emu.admin.kill(inst.instance_id)
    thread.join(5)
    assert not thread.is_alive() and errors
    emu.admin.set_latency(inst.instance_id, base_ms=0)
    emu.admin.revive(inst.instance_id)


def test_scale_up_and_down_changes_endpoints(emu):
    before = api_endpoints(emu, HTTP)
    emu.admin.scale(HTTP.service_id, 4)
    after = api_endpoints(emu, HTTP)
    assert len(after) == 4 and after[:2] == before
    for ip, port in after:
        assert requests.get(f"http://{ip}:{port}/", timeout=5).status_code == 200
    emu.admin.scale(HTTP.service_id, 2, wait=True)
    assert api_endpoints(emu, HTTP) == before  # the newest went first
    for ip, port in after[2:]:
        assert refused(ip, port)
    retired = [i for i in emu.admin.instance_stats(HTTP.service_id) if not i.listed]
    assert len(retired) == 2 and all(i.state == "stopped" for i in retired)


def test_scale_in_unlists_at_once_and_lets_in_flight_finish(emu):
    emu.admin.scale(HTTP.service_id, 3)
    newest = emu.admin.instances(HTTP.service_id)[-1]
    emu.admin.set_latency(newest.instance_id, base_ms=800)
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(requests.get, f"http://{newest.address}/work", timeout=10)
        time.sleep(0.3)
        emu.admin.scale(HTTP.service_id, 2)
        assert (newest.ip, newest.port) not in api_endpoints(emu, HTTP)
        assert refused(newest.ip, newest.port)  # listener closed at once
        resp = future.result()
    assert resp.status_code == 200 and resp.json()["instance_id"] == newest.instance_id


def test_concurrency_one_queues(emu):
    inst = emu.admin.instances(QUEUED.service_id)[0]
    start = time.monotonic()
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: requests.post(f"http://{inst.address}/p", timeout=10), range(3)))
    elapsed = time.monotonic() - start
    assert [r.status_code for r in results] == [200, 200, 200]
    assert elapsed >= 0.55  # three 200 ms requests, one at a time
    stats = emu.admin.instance(inst.instance_id)
    assert stats.max_in_flight == 1 and stats.served == 3 and stats.in_flight == 0 and stats.queued == 0


def test_in_flight_is_visible(emu):
    inst = emu.admin.instances(QUEUED.service_id)[0]
    emu.admin.set_latency(inst.instance_id, base_ms=600, distribution="constant")
    try:
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(requests.post, f"http://{inst.address}/p", timeout=10) for _ in range(2)]
            deadline = time.monotonic() + 0.5
            seen = []
            while time.monotonic() < deadline:
                stats = emu.admin.instance(inst.instance_id)
                seen.append((stats.in_flight, stats.queued))
                if seen[-1] == (1, 1):
                    break
                time.sleep(0.02)
            assert seen[-1] == (1, 1), seen
            assert all(f.result().status_code == 200 for f in futures)
    finally:
        emu.admin.set_latency(inst.instance_id, base_ms=200, distribution="constant")


def test_https_instance_verifies_with_the_ca(emu):
    inst = emu.admin.instances(HTTPS.service_id)[0]
    assert inst.schema_ == "https"
    resp = requests.get(f"https://{inst.address}/x", verify=emu.ca_pem_path, timeout=5)
    assert resp.status_code == 200 and resp.json()["instance_id"] == inst.instance_id
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"https://{inst.address}/x", timeout=5)  # system CAs don't know ours
    ctx = ssl.create_default_context(cafile=emu.ca_pem_path)
    with socket.create_connection((inst.ip, inst.port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=inst.ip) as tls:
        assert tls.version() is not None


def test_tcp_echo(emu):
    inst = emu.admin.instances(TCP.service_id)[0]
    with socket.create_connection((inst.ip, inst.port), timeout=5) as sock:
        reader = sock.makefile("rb")
        assert reader.readline() == f"{inst.instance_id}\n".encode()
        sock.sendall(b"hello\n")
        assert reader.readline() == b"hello\n"
    emu.admin.kill(inst.instance_id)
    assert refused(inst.ip, inst.port)
    emu.admin.revive(inst.instance_id)
    with socket.create_connection((inst.ip, inst.port), timeout=5) as sock:
        assert sock.makefile("rb").readline() == f"{inst.instance_id}\n".encode()
    assert emu.admin.instance(inst.instance_id).served == 2  # connections, across the restart


def test_stream(emu):
    inst = emu.admin.instances(HTTP.service_id)[0]
    start = time.monotonic()
    resp = requests.post(f"http://{inst.address}/stream", params={"chunks": 4, "interval_ms": 50}, stream=True,
                         timeout=5)
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    events = [line for line in resp.iter_lines() if line]
    assert len(events) == 5 and events[-1] == b"data: [DONE]"
    assert time.monotonic() - start >= 0.14


def test_health_error_rate_and_latency(emu, session):
    inst = emu.admin.instances(HTTP.service_id)[0]
    base = f"http://{inst.address}"
    assert session.get(base + "/health", timeout=5).status_code == 200
    emu.admin.set_healthy(inst.instance_id, False)
    assert session.get(base + "/health", timeout=5).status_code == 503
    assert session.get(base + "/other", timeout=5).status_code == 200  # only the health check fails
    emu.admin.set_healthy(inst.instance_id, True)
    emu.admin.set_error_rate(inst.instance_id, 1.0)
    assert session.post(base + "/p", timeout=5).status_code == 500
    emu.admin.set_error_rate(inst.instance_id, 0.0)
    emu.admin.set_latency(inst.instance_id, base_ms=300, jitter_ms=0, distribution="constant")
    start = time.monotonic()
    session.post(base + "/p", timeout=5)
    assert time.monotonic() - start >= 0.29
    emu.admin.set_latency(inst.instance_id, base_ms=0)
    stats = emu.admin.instance(inst.instance_id)
    assert stats.errors >= 1 and stats.health_checks >= 2


def test_pinned_addresses_are_reused_and_limited(emu):
    emu.admin.scale(PINNED.service_id, 2)
    assert sorted(ip for ip, _ in api_endpoints(emu, PINNED)) == ["127.0.0.201", "127.0.0.202"]
    with pytest.raises(EmulatorAdminError) as info:
        emu.admin.scale(PINNED.service_id, 3)
    assert info.value.status == 409
    emu.admin.scale(PINNED.service_id, 1, wait=True)
    emu.admin.scale(PINNED.service_id, 2)
    assert sorted(ip for ip, _ in api_endpoints(emu, PINNED)) == ["127.0.0.201", "127.0.0.202"]


def test_add_and_remove_service_at_runtime(emu):
    added = emu.admin.add_service(ServiceConfig(name="svc-late", instances=1, port=0))
    assert len(added["instances"]) == 1 and added["instances"][0]["listed"]
    with pytest.raises(EmulatorAdminError) as info:
        emu.admin.add_service({"name": "svc-late"})
    assert info.value.status == 409
    ip, port = added["instances"][0]["ip"], added["instances"][0]["port"]
    emu.admin.remove_service(added["service_id"])
    assert refused(ip, port)


def test_fixed_port_shared_by_instances_on_different_ips(emu):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    emu.admin.add_service(ServiceConfig(name="svc-fixed", instances=2, port=port))
    instances = [i for i in emu.admin.instance_stats() if i.service_name == "svc-fixed"]
    assert [i.port for i in instances] == [port, port] and instances[0].ip != instances[1].ip
    for inst in instances:
        assert requests.get(f"http://{inst.address}/", timeout=5).json()["instance_id"] == inst.instance_id
    emu.admin.remove_service(instances[0].service_id)


def test_stop_is_prompt_with_requests_hanging():
    svc = ServiceConfig(name="hang", instances=1, latency=LatencyConfig(base_ms=30_000))
    emu = Emulator(EmulatorConfig(services=[svc])).start()
    emu.admin.inject_fault("timeout", svc.service_id, seconds=30)
    inst = emu.admin.instances()[0]
    outcomes = []

    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": "demo-user", "password": "demo-password", "domain": {"name": "demo-domain"}}}},
        "scope": {"project": {"name": "cn-north-4"}}}}
    token = requests.post(emu.iam_url + "/v3/auth/tokens", json=body, timeout=5).headers["X-Subject-Token"]

    def call(url):
        try:
            requests.get(url, headers={"X-Auth-Token": token}, timeout=20)
            outcomes.append("answered")
        except requests.ConnectionError:
            outcomes.append("dropped")

    urls = [f"http://{inst.address}/slow",
            f"{emu.modelarts_url}/v1/{DEFAULT_PROJECT_ID}/services/{svc.service_id}/predict/endpoints"
            "?type=host_endpoints"]
    threads = [threading.Thread(target=call, args=(u,)) for u in urls]
    for t in threads:
        t.start()
    time.sleep(0.3)
    start = time.monotonic()
    emu.stop()
    assert time.monotonic() - start < 5
    for t in threads:
        t.join(5)
    assert outcomes == ["dropped", "dropped"]


def test_stop_leaves_nothing_listening():
    emu = Emulator(EmulatorConfig(services=[ServiceConfig(name="a", instances=2),
                                            ServiceConfig(name="b", schema="tcp", instances=1)]))
    emu.start()
    addresses = [tuple(u.rsplit("//", 1)[1].rsplit(":", 1)) for u in (emu.iam_url, emu.modelarts_url, emu.admin_url)]
    addresses += [(i.ip, i.port) for i in emu.admin.instances()]
    ca = emu.ca_pem_path
    thread = emu._thread
    for host, port in addresses:
        assert not refused(host, int(port))
    emu.stop()
    for host, port in addresses:
        assert refused(host, int(port)), f"{host}:{port} still listening"
    assert thread is not None and not thread.is_alive()
    assert not __import__("os").path.exists(ca)
    emu.stop()  # idempotent
