"""The programmable (`custom`) fault and IAM-side faults: any status, header and body shape, on any call."""

from __future__ import annotations

import email.utils
import json
import socket
import time

import pytest
import requests
from modelarts_emulator import Emulator, EmulatorAdminError, EmulatorConfig, ServiceConfig
from modelarts_emulator.config import DEFAULT_PROJECT_ID

SVC = ServiceConfig(name="svc-custom", instances=1)


@pytest.fixture(scope="module")
def emu():
    with Emulator(EmulatorConfig(services=[SVC])) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh(emu):
    emu.admin.set_limits(per_user_per_minute=10_000)
    yield
    emu.admin.clear_faults()


def token_request(emu, **kw):
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": "demo-user", "password": "demo-password", "domain": {"name": "demo-domain"}}}},
        "scope": {"project": {"name": "cn-north-4"}}}}
    kw.setdefault("timeout", 5)
    return requests.post(emu.iam_url + "/v3/auth/tokens", json=body, **kw)


@pytest.fixture(scope="module")
def token(emu):
    return token_request(emu).headers["X-Subject-Token"]


def get(emu, token, **kw):
    kw.setdefault("timeout", 5)
    url = f"{emu.modelarts_url}/v1/{DEFAULT_PROJECT_ID}/services/{SVC.service_id}/predict/endpoints?type=host_endpoints"
    return requests.get(url, headers={"X-Auth-Token": token}, **kw)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 418, 429, 500, 502, 503, 504, 599])
def test_any_status_with_the_gateway_error_shape(emu, token, status):
    emu.admin.inject_fault("custom", SVC.service_id, count=1, status=status, body="error",
                           error_code="APIGW.9999", error_msg="emulated")
    resp = get(emu, token)
    assert resp.status_code == status
    assert resp.json() == {"error_code": "APIGW.9999", "error_msg": "emulated"}
    assert emu.admin.calls(api="modelarts")[-1].fault == "custom"
    assert get(emu, token).status_code == 200


@pytest.mark.parametrize("value", ["soon", "1.5", "", "-5", "99999999999999999999", "Wed, 21 Oct 2015 07:28:00 GMT"])
def test_retry_after_any_string(emu, token, value):
    emu.admin.inject_fault("custom", SVC.service_id, count=1, status=429, body="error",
                           headers={"Retry-After": value})
    resp = get(emu, token)
    assert resp.status_code == 429 and resp.headers["Retry-After"] == value
    emu.admin.inject_fault("429", SVC.service_id, count=1, retry_after=value)
    assert get(emu, token).headers["Retry-After"] == value


def test_missing_and_odd_content_type_and_date(emu, token):
    emu.admin.inject_fault("custom", SVC.service_id, count=1, omit_headers=["Content-Type", "Date"])
    resp = get(emu, token)
    assert resp.status_code == 200 and "Content-Type" not in resp.headers and "Date" not in resp.headers
    assert resp.json()["service_id"] == SVC.service_id  # the normal body
    emu.admin.inject_fault("custom", SVC.service_id, count=1, headers={"Content-Type": "text/html; charset=koi8-r"})
    assert get(emu, token).headers["Content-Type"] == "text/html; charset=koi8-r"
    skewed = email.utils.formatdate(time.time() + 7200, usegmt=True)
    emu.admin.inject_fault("custom", SVC.service_id, count=1, headers={"Date": skewed})
    assert get(emu, token).headers["Date"] == skewed
    emu.admin.inject_fault("custom", SVC.service_id, count=1, headers={"Date": "yesterday-ish"})
    assert get(emu, token).headers["Date"] == "yesterday-ish"


def test_bodies_out_of_shape(emu, token):
    emu.admin.inject_fault("custom", SVC.service_id, count=1, status=503, body="text", text="<html>busy</html>")
    resp = get(emu, token)
    assert resp.status_code == 503 and resp.text == "<html>busy</html>"
    assert resp.headers["Content-Type"].startswith("text/plain")
    emu.admin.inject_fault("custom", SVC.service_id, count=1, status=500, body="json",
                           json_body={"error": "nested", "code": [1, 2]})
    assert get(emu, token).json() == {"error": "nested", "code": [1, 2]}
    emu.admin.inject_fault("custom", SVC.service_id, count=1, status=500, body="json", json_body=["not", "a", "dict"])
    assert get(emu, token).json() == ["not", "a", "dict"]
    emu.admin.inject_fault("custom", SVC.service_id, count=1, status=502, body="none")
    resp = get(emu, token)
    assert resp.status_code == 502 and resp.content == b""


def test_huge_error_body_declared_or_chunked(emu, token):
    emu.admin.inject_fault("custom", SVC.service_id, count=1, status=503, body="error", size_mb=2)
    resp = get(emu, token)
    assert resp.status_code == 503 and int(resp.headers["Content-Length"]) > 2 * 1024 * 1024
    assert resp.json()["error_code"] == "ModelArts.0001"  # still valid JSON, with a padding member
    emu.admin.inject_fault("custom", SVC.service_id, count=1, status=500, body="text", text="x", size_mb=1,
                           chunked=True)
    resp = get(emu, token)
    assert "Content-Length" not in resp.headers and resp.headers["Transfer-Encoding"] == "chunked"
    assert len(resp.content) > 1024 * 1024


def test_slowloris_error_body(emu, token):
    emu.admin.inject_fault("custom", SVC.service_id, count=1, status=500, body="error", interval_seconds=0.1,
                           chunk_bytes=2)
    started = time.monotonic()
    resp = get(emu, token, stream=True)
    assert resp.status_code == 500  # headers at once, the body a trickle
    first = resp.raw.read(6)
    resp.close()
    assert first == b'{"erro' and time.monotonic() - started >= 0.25


@pytest.mark.parametrize("how", ["close", "reset"])
def test_truncated_body(emu, token, how):
    emu.admin.inject_fault("custom", SVC.service_id, count=1, status=503, body="error", truncate=how)
    with pytest.raises(requests.exceptions.ChunkedEncodingError if how == "close" else
                       (requests.exceptions.ChunkedEncodingError, requests.ConnectionError)):
        get(emu, token).content  # noqa: B018
    assert emu.admin.calls(api="modelarts")[-1].status == 0
    assert get(emu, token).status_code == 200


def test_iam_faults(emu):
    emu.admin.inject_fault("5xx", applies_to="iam", count=1, status=503)
    resp = token_request(emu)
    assert resp.status_code == 503 and resp.json()["error"]["code"] == 503  # IAM's own error shape
    emu.admin.inject_fault("429", applies_to="iam", count=1, retry_after="soon")
    resp = token_request(emu)
    assert resp.status_code == 429 and resp.headers["Retry-After"] == "soon"
    emu.admin.inject_fault("custom", applies_to="iam", count=1, omit_headers=["X-Subject-Token"])
    resp = token_request(emu)
    assert resp.status_code == 201 and "X-Subject-Token" not in resp.headers and "token" in resp.json()
    emu.admin.inject_fault("custom", applies_to="iam", count=1, expires_at="not-a-date")
    resp = token_request(emu)
    assert resp.status_code == 201 and resp.headers["X-Subject-Token"]
    assert resp.json()["token"]["expires_at"] == "not-a-date"
    emu.admin.inject_fault("custom", applies_to="iam", count=1, status=201, body="text", text="ok")
    assert token_request(emu).text == "ok"
    iam_calls = emu.admin.calls(api="iam")[-5:]
    assert [c.fault for c in iam_calls] == ["5xx", "429", "custom", "custom", "custom"]
    assert iam_calls[2].user == "demo-user" and iam_calls[2].status == 201
    assert token_request(emu).status_code == 201  # all used up


def test_iam_slowloris_timeout_and_reset(emu):
    emu.admin.inject_fault("slowloris", applies_to="iam", count=1, interval_seconds=0.5)
    with pytest.raises(requests.exceptions.ConnectionError):
        token_request(emu, timeout=(2, 0.2)).content  # noqa: B018
    emu.admin.inject_fault("reset", applies_to="iam", count=1)
    with pytest.raises(requests.ConnectionError):
        token_request(emu)
    emu.admin.inject_fault("custom", applies_to="iam", count=1, status=500, body="error", size_mb=1)
    resp = token_request(emu)
    assert resp.status_code == 500 and len(resp.content) > 1024 * 1024


@pytest.mark.parametrize("kind", ["malformed", "oversized", "slowloris"])
def test_iam_body_faults_shape_the_real_token_answer(emu, kind):
    params = {"size_mb": 1} if kind == "oversized" else {"interval_seconds": 0.001} if kind == "slowloris" else {}
    emu.admin.inject_fault(kind, applies_to="iam", count=1, **params)
    resp = token_request(emu, timeout=30)
    assert resp.status_code == 201 and resp.headers["X-Subject-Token"].startswith("MII")
    if kind == "malformed":
        with pytest.raises(ValueError):
            json.loads(resp.text)
    else:
        assert "expires_at" in resp.json()["token"]
        assert kind != "oversized" or len(resp.content) > 1024 * 1024


def test_modelarts_faults_do_not_hit_iam_and_back(emu, token):
    emu.admin.inject_fault("5xx", applies_to="all", count=1)
    assert token_request(emu).status_code == 201  # "all" means both ModelArts targets, not IAM
    assert get(emu, token).status_code == 500
    emu.admin.inject_fault("5xx", applies_to="iam", count=1)
    assert get(emu, token).status_code == 200


@pytest.mark.parametrize("params", [
    {"kind": "custom", "applies_to": "iam", "service_id": SVC.service_id},
    {"kind": "hostile_ips", "applies_to": "iam"},
    {"kind": "custom", "expires_at": "x"},
    {"kind": "custom", "headers": {"X-Evil": "a\r\nSet-Cookie: b"}},
    {"kind": "custom", "headers": {"Bad Name": "x"}},
    {"kind": "custom", "status": 700},
    {"kind": "5xx", "status": 404},
    {"kind": "timeout", "headers": {"A": "b"}},
    {"kind": "custom", "body": "yaml"},
])
def test_bad_custom_faults_are_refused(emu, params):
    kind = params.pop("kind")
    with pytest.raises(EmulatorAdminError) as info:
        emu.admin.inject_fault(kind, **params)
    assert info.value.status in (400, 404)


def test_still_serving_after_everything(emu, token):
    host, port = emu.modelarts_url.rsplit("//", 1)[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=2):
        pass
    assert json.loads(get(emu, token).text)["service_id"] == SVC.service_id
