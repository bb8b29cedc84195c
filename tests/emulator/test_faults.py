"""Every fault kind is observable on the endpoints look-up, and faults respect count/duration/target."""

from __future__ import annotations

import json
import socket
import time

import pytest
import requests
from modelarts_emulator import Emulator, EmulatorAdminError, EmulatorConfig, ServiceConfig
from modelarts_emulator.config import DEFAULT_PROJECT_ID

SVC = ServiceConfig(name="svc-faults", instances=1)
OTHER = ServiceConfig(name="svc-other", instances=1)


@pytest.fixture(scope="module")
def emu():
    with Emulator(EmulatorConfig(services=[SVC, OTHER])) as running:
        yield running


@pytest.fixture(scope="module")
def token(emu):
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": "demo-user", "password": "demo-password", "domain": {"name": "demo-domain"}}}},
        "scope": {"project": {"name": "cn-north-4"}}}}
    return requests.post(emu.iam_url + "/v3/auth/tokens", json=body, timeout=5).headers["X-Subject-Token"]


@pytest.fixture(autouse=True)
def fresh(emu):
    emu.admin.set_limits(per_user_per_minute=10_000)  # these tests make many calls
    yield
    emu.admin.clear_faults()
    emu.admin.set_clock_skew(0)


def url(emu, svc=SVC, details=False):
    base = f"{emu.modelarts_url}/v1/{DEFAULT_PROJECT_ID}/services/{svc.service_id}"
    return base if details else base + "/predict/endpoints?type=host_endpoints"


def get(emu, token, svc=SVC, **kw):
    kw.setdefault("timeout", 5)
    return requests.get(url(emu, svc, kw.pop("details", False)), headers={"X-Auth-Token": token}, **kw)


def last_call(emu):
    return emu.admin.calls(api="modelarts")[-1]


@pytest.mark.parametrize("status,code", [(500, "ModelArts.0010"), (502, "APIGW.0202"), (503, "APIGW.0201")])
def test_5xx(emu, token, status, code):
    emu.admin.inject_fault("5xx", SVC.service_id, count=1, status=status)
    resp = get(emu, token)
    assert resp.status_code == status and resp.json()["error_code"] == code
    assert get(emu, token).status_code == 200  # count=1 is used up
    assert last_call(emu).fault is None


def test_timeout_hangs_then_closes(emu, token):
    emu.admin.inject_fault("timeout", SVC.service_id, count=1, seconds=0.5)
    start = time.monotonic()
    with pytest.raises(requests.ConnectionError):
        get(emu, token)
    assert time.monotonic() - start >= 0.45
    call = last_call(emu)
    assert call.fault == "timeout" and call.status == 0
    emu.admin.inject_fault("timeout", SVC.service_id, count=1, seconds=5)
    with pytest.raises(requests.ReadTimeout):
        get(emu, token, timeout=0.3)
    time.sleep(0.1)
    call = last_call(emu)  # logged although the client left before the hang-up
    assert call.fault == "timeout" and call.status == 0 and call.counted


def test_malformed(emu, token):
    emu.admin.inject_fault("malformed", SVC.service_id, count=1)
    resp = get(emu, token)
    assert resp.status_code == 200
    with pytest.raises(ValueError):
        json.loads(resp.text)


@pytest.mark.parametrize("variant", ["endpoints_dict", "port_list", "ip_number", "body_array", "endpoints_string"])
def test_wrong_types(emu, token, variant):
    emu.admin.inject_fault("wrong_types", SVC.service_id, count=1, variant=variant)
    body = get(emu, token).json()
    if variant == "endpoints_dict":
        assert isinstance(body["endpoints"], dict)
    elif variant == "port_list":
        assert isinstance(body["endpoints"][0]["port"], list)
    elif variant == "ip_number":
        assert isinstance(body["endpoints"][0]["ip"], int)
    elif variant == "body_array":
        assert isinstance(body, list)
    else:
        assert isinstance(body["endpoints"], str)


def test_empty(emu, token):
    emu.admin.inject_fault("empty", SVC.service_id, count=1)
    assert get(emu, token).json()["endpoints"] == []
    assert len(get(emu, token).json()["endpoints"]) == 1


def test_hostile_ips(emu, token):
    real = get(emu, token).json()["endpoints"][0]
    emu.admin.inject_fault("hostile_ips", SVC.service_id, count=1)
    endpoints = get(emu, token).json()["endpoints"]
    ips = {e["ip"] for e in endpoints}
    assert {"127.0.0.1", "169.254.169.254", "224.0.0.1", "0.0.0.0", "::ffff:127.0.0.1", "::1", "fe80::1",
            "8.8.8.8"} <= ips
    ports = [e["port"] for e in endpoints]
    assert 0 in ports and 65536 in ports and "abc" in ports
    assert any(e["schema"] == "ftp" for e in endpoints)
    assert endpoints.count(real) == 2  # the one valid entry, duplicated


def test_oversized(emu, token):
    emu.admin.inject_fault("oversized", SVC.service_id, count=1, size_mb=3)
    resp = get(emu, token)
    assert int(resp.headers["Content-Length"]) >= 3 * 1024 * 1024
    assert len(resp.content) >= 3 * 1024 * 1024
    assert resp.json()["service_id"] == SVC.service_id


def test_reset(emu, token):
    emu.admin.inject_fault("reset", SVC.service_id, count=1)
    with pytest.raises(requests.ConnectionError) as info:
        get(emu, token)
    assert "reset" in str(info.value).lower()


def test_slowloris(emu, token):
    emu.admin.inject_fault("slowloris", SVC.service_id, count=1, interval_seconds=0.1)
    start = time.monotonic()
    resp = get(emu, token, stream=True)
    first = resp.raw.read(5)
    elapsed = time.monotonic() - start
    resp.close()
    assert len(first) == 5 and first.startswith(b"{")
    assert elapsed >= 0.45  # five bytes, one per 0.1 s
    emu.admin.inject_fault("slowloris", SVC.service_id, count=1, interval_seconds=0.5)
    with pytest.raises(requests.exceptions.ConnectionError):  # urllib3 reports the read timeout this way
        get(emu, token, timeout=(2, 0.2)).content  # noqa: B018


def test_forced_429_is_not_counted(emu, token):
    emu.admin.inject_fault("429", SVC.service_id, count=2)
    resp = get(emu, token)
    assert resp.status_code == 429 and resp.json()["error_code"] == "APIGW.0308"
    assert "Retry-After" not in resp.headers
    assert not last_call(emu).counted
    resp = get(emu, token)
    assert resp.status_code == 429
    emu.admin.inject_fault("429", SVC.service_id, count=1, retry_after=7)
    assert get(emu, token).headers["Retry-After"] == "7"
    assert get(emu, token).status_code == 200


def test_fault_scope_duration_and_clear(emu, token):
    emu.admin.inject_fault("empty", OTHER.service_id)
    assert len(get(emu, token).json()["endpoints"]) == 1  # other service's fault
    assert get(emu, token, svc=OTHER).json()["endpoints"] == []
    assert get(emu, token, svc=OTHER).json()["endpoints"] == []  # no count: until cleared
    assert get(emu, token, svc=OTHER, details=True).json()["status"] == "running"  # details untouched
    assert emu.admin.clear_faults() == 1
    assert len(get(emu, token, svc=OTHER).json()["endpoints"]) == 1
    emu.admin.inject_fault("5xx", duration_seconds=30, applies_to="all")
    assert get(emu, token, details=True).status_code == 500
    emu.admin.set_clock_skew(31)
    assert get(emu, token).status_code == 200


def test_bad_fault_requests_are_rejected(emu):
    with pytest.raises(EmulatorAdminError) as info:
        emu.admin.inject_fault("nonsense")
    assert info.value.status == 400
    with pytest.raises(EmulatorAdminError):
        emu.admin.inject_fault("timeout", status=502)
    with pytest.raises(EmulatorAdminError) as info:
        emu.admin.inject_fault("empty", service_id="no-such-service")
    assert info.value.status == 404


def test_api_still_listening_after_faults(emu, token):
    host, port = emu.modelarts_url.rsplit("//", 1)[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=2):
        pass
    assert get(emu, token).status_code == 200
