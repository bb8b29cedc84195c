"""IAM and ModelArts API behaviour of a running emulator: tokens, AK/SK, limits, errors, call log."""

from __future__ import annotations

import time
from urllib.parse import urlparse

import pytest
import requests
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer
from modelarts_emulator import Emulator, EmulatorConfig, ServiceConfig
from modelarts_emulator.config import DEFAULT_AK, DEFAULT_PROJECT_ID, DEFAULT_SK, AccessKey, UserConfig

OTHER_PROJECT = "fedcba9876543210fedcba9876543210"
SVC = ServiceConfig(name="svc-api", instances=2)
FOREIGN_SVC = ServiceConfig(name="svc-foreign", project_id=OTHER_PROJECT, instances=0)
LIMITS = {"per_user_per_minute": 20, "per_tenant_per_minute": 2000, "send_retry_after": False,
          "max_clock_skew_seconds": 900.0, "window_seconds": 60.0}


@pytest.fixture(scope="module")
def emu():
    users = [
        UserConfig(access_keys=[AccessKey(ak=DEFAULT_AK, sk=DEFAULT_SK)]),
        UserConfig(name="second-user", password="second-password"),
        UserConfig(domain="other-domain", name="outsider", password="outsider-password",
                   project_id=OTHER_PROJECT, project_name="cn-south-1",
                   access_keys=[AccessKey(ak="OTHERAK", sk="other-sk")]),
    ]
    config = EmulatorConfig(users=users, services=[SVC, FOREIGN_SVC], token_ttl_seconds=600)
    with Emulator(config) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh(emu):
    yield
    emu.admin.set_clock_skew(0)
    emu.admin.set_limits(**LIMITS)
    emu.admin.clear_faults()
    emu.admin.iam_down(False)


def token_body(name="demo-user", password="demo-password", domain="demo-domain", project=None):
    scope = project or {"name": "cn-north-4"}
    return {"auth": {"identity": {"methods": ["password"],
                                  "password": {"user": {"name": name, "password": password,
                                                        "domain": {"name": domain}}}},
                     "scope": {"project": scope}}}


def get_token(emu, **kw):
    resp = requests.post(emu.iam_url + "/v3/auth/tokens", json=token_body(**kw), timeout=5)
    assert resp.status_code == 201, resp.text
    return resp.headers["X-Subject-Token"]


def endpoints_url(emu, project=DEFAULT_PROJECT_ID, service_id=SVC.service_id):
    return f"{emu.modelarts_url}/v1/{project}/services/{service_id}/predict/endpoints?type=host_endpoints"


def lookup(emu, token, **kw):
    return requests.get(endpoints_url(emu, **kw), headers={"X-Auth-Token": token}, timeout=5)


def signed_get(emu, path, query=(("type", "host_endpoints"),), ak=DEFAULT_AK, sk=DEFAULT_SK, date=None):
    netloc = urlparse(emu.modelarts_url).netloc
    headers = {"X-Sdk-Date": date} if date else {}
    req = SdkRequest("GET", "http", netloc, path, query_params=list(query), header_params=headers)
    Signer(BasicCredentials(ak, sk)).sign(req)
    return req


def send(emu, req, uri=None):
    return requests.get(emu.modelarts_url + (uri or req.uri), headers=req.header_params, timeout=5)


def error_of(resp):
    body = resp.json()
    return body["error_code"], body["error_msg"]


ENDPOINTS_PATH = f"/v1/{DEFAULT_PROJECT_ID}/services/{SVC.service_id}/predict/endpoints"

# --- IAM ---------------------------------------------------------------------------------


def test_token_issue_shape(emu):
    resp = requests.post(emu.iam_url + "/v3/auth/tokens", json=token_body(), timeout=5)
    assert resp.status_code == 201
    token = resp.headers["X-Subject-Token"]
    assert len(token) > 1000
    body = resp.json()["token"]
    assert body["methods"] == ["password"]
    assert body["expires_at"].endswith("Z") and body["issued_at"].endswith("Z")
    assert body["project"]["id"] == DEFAULT_PROJECT_ID and body["user"]["name"] == "demo-user"
    assert lookup(emu, token).status_code == 200


@pytest.mark.parametrize("kw", [{"password": "wrong"}, {"name": "nobody"}, {"domain": "other-domain"}])
def test_token_refused_for_wrong_credentials(emu, kw):
    resp = requests.post(emu.iam_url + "/v3/auth/tokens", json=token_body(**kw), timeout=5)
    assert resp.status_code == 401
    assert resp.json() == {"error": {"code": 401, "message": "The username or password is wrong.",
                                     "title": "Unauthorized"}}
    assert "X-Subject-Token" not in resp.headers


@pytest.mark.parametrize("body", [b"not json", b"{}", b'{"auth": {"identity": {"methods": ["token"]}}}'])
def test_token_malformed_body_is_400(emu, body):
    resp = requests.post(emu.iam_url + "/v3/auth/tokens", data=body, timeout=5)
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == 400


def test_token_scope_by_project_id_and_unknown_project(emu):
    assert get_token(emu, project={"id": DEFAULT_PROJECT_ID})
    resp = requests.post(emu.iam_url + "/v3/auth/tokens", json=token_body(project={"id": OTHER_PROJECT}), timeout=5)
    assert resp.status_code == 401


def test_token_expires_after_ttl(emu):
    token = get_token(emu)
    assert lookup(emu, token).status_code == 200
    emu.admin.set_clock_skew(601)  # token_ttl_seconds is 600
    resp = lookup(emu, token)
    assert resp.status_code == 401
    assert error_of(resp) == ("APIGW.0301", "Incorrect IAM authentication information: token expired")


def test_revoked_tokens_get_401_and_reauth_works(emu):
    token = get_token(emu)
    assert emu.admin.revoke_tokens() >= 1
    resp = lookup(emu, token)
    assert resp.status_code == 401 and error_of(resp)[0] == "APIGW.0301"
    assert lookup(emu, get_token(emu)).status_code == 200


def test_iam_down_is_503_but_modelarts_keeps_accepting_tokens(emu):
    token = get_token(emu)
    emu.admin.iam_down(True)
    resp = requests.post(emu.iam_url + "/v3/auth/tokens", json=token_body(), timeout=5)
    assert resp.status_code == 503
    assert lookup(emu, token).status_code == 200
    emu.admin.iam_down(False)
    assert get_token(emu)


# --- ModelArts: auth, errors ---------------------------------------------------------------------


def test_missing_and_garbage_token(emu):
    resp = requests.get(endpoints_url(emu), timeout=5)
    assert resp.status_code == 401
    assert error_of(resp) == ("APIGW.0301", "Incorrect IAM authentication information: x-auth-token not found")
    resp = lookup(emu, "MIIgarbage")
    assert resp.status_code == 401 and error_of(resp)[0] == "APIGW.0301"


def test_endpoints_and_details_bodies(emu):
    token = get_token(emu)
    body = lookup(emu, token).json()
    assert body["service_id"] == SVC.service_id and body["service_name"] == "svc-api"
    assert len(body["endpoints"]) == 2
    for ep in body["endpoints"]:
        assert ep["schema"] == "http" and ep["ip"].startswith("127.0.0.") and isinstance(ep["port"], int)
    details = requests.get(f"{emu.modelarts_url}/v1/{DEFAULT_PROJECT_ID}/services/{SVC.service_id}",
                           headers={"X-Auth-Token": token}, timeout=5).json()
    assert details["status"] == "running" and details["infer_type"] == "real-time"
    emu.admin.set_status(SVC.service_id, "concerning")
    details = requests.get(f"{emu.modelarts_url}/v1/{DEFAULT_PROJECT_ID}/services/{SVC.service_id}",
                           headers={"X-Auth-Token": token}, timeout=5).json()
    assert details["status"] == "concerning"
    emu.admin.set_status(SVC.service_id, "running")


def test_unknown_service_project_mismatch_and_unknown_api(emu):
    token = get_token(emu)
    resp = lookup(emu, token, service_id="00000000-0000-0000-0000-000000000000")
    assert resp.status_code == 404 and error_of(resp)[0] == "ModelArts.3502"
    resp = lookup(emu, token, project=OTHER_PROJECT, service_id=FOREIGN_SVC.service_id)
    assert resp.status_code == 403 and error_of(resp)[0] == "ModelArts.0203"
    resp = requests.get(emu.modelarts_url + "/v2/nothing", headers={"X-Auth-Token": token}, timeout=5)
    assert resp.status_code == 404 and error_of(resp)[0] == "APIGW.0101"
    resp = requests.get(endpoints_url(emu).replace("host_endpoints", "other"), headers={"X-Auth-Token": token},
                        timeout=5)
    assert resp.status_code == 400


def test_aksk_signed_request_accepted(emu):
    resp = send(emu, signed_get(emu, ENDPOINTS_PATH))
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["endpoints"]) == 2
    call = emu.admin.calls()[-1]
    assert (call.auth, call.user, call.status, call.counted) == ("aksk", "demo-user", 200, True)


def test_aksk_with_sdk_project_header(emu):
    netloc = urlparse(emu.modelarts_url).netloc
    req = SdkRequest("GET", "http", netloc, ENDPOINTS_PATH, query_params=[("type", "host_endpoints")],
                     header_params={})
    BasicCredentials(DEFAULT_AK, DEFAULT_SK, DEFAULT_PROJECT_ID).sign_request(req)
    assert send(emu, req).status_code == 200
    wrong = SdkRequest("GET", "http", netloc, ENDPOINTS_PATH, query_params=[("type", "host_endpoints")],
                       header_params={})
    BasicCredentials(DEFAULT_AK, DEFAULT_SK, OTHER_PROJECT).sign_request(wrong)
    resp = send(emu, wrong)
    assert resp.status_code == 403 and error_of(resp)[0] == "ModelArts.0203"


@pytest.mark.parametrize("tamper", ["path", "query", "signature", "secret"])
def test_aksk_tampered_refused(emu, tamper):
    req = signed_get(emu, ENDPOINTS_PATH, sk="wrong-sk" if tamper == "secret" else DEFAULT_SK)
    uri = req.uri
    if tamper == "path":
        uri = uri.replace("/predict/endpoints", "")
    elif tamper == "query":
        uri += "&type=host_endpoints"
    elif tamper == "signature":
        sig = req.header_params["Authorization"]
        req.header_params["Authorization"] = sig[:-4] + ("0000" if not sig.endswith("0000") else "1111")
    resp = send(emu, req, uri)
    assert resp.status_code == 401
    assert error_of(resp) == ("APIGW.0301", "Incorrect IAM authentication information: verify aksk signature fail")


def test_aksk_skewed_date_refused(emu):
    old = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() - 1000))
    resp = send(emu, signed_get(emu, ENDPOINTS_PATH, date=old))
    assert resp.status_code == 401
    assert "too far from the server time" in error_of(resp)[1]
    emu.admin.set_clock_skew(-1000)  # now the emulator agrees with that date
    assert send(emu, signed_get(emu, ENDPOINTS_PATH, date=old)).status_code == 200
    resp = send(emu, signed_get(emu, ENDPOINTS_PATH))  # a current date is now too far ahead
    assert resp.status_code == 401


def test_aksk_of_another_tenant_gets_403(emu):
    resp = send(emu, signed_get(emu, ENDPOINTS_PATH, ak="OTHERAK", sk="other-sk"))
    assert resp.status_code == 403 and error_of(resp)[0] == "ModelArts.0203"


# --- rate limits -----------------------------------------------------------------------------


def test_user_limit_21st_call_throttled_second_user_passes(emu):
    token = get_token(emu)
    second = get_token(emu, name="second-user", password="second-password")
    start = emu.admin.calls()[-1].seq
    for _ in range(20):
        assert lookup(emu, token).status_code == 200
    resp = lookup(emu, token)
    assert resp.status_code == 429
    assert error_of(resp) == (
        "APIGW.0308",
        "The throttling threshold has been reached: policy user over ratelimit, limit:20, time:1 minute",
    )
    assert "Retry-After" not in resp.headers
    # AK/SK calls by the same user share the user's budget.
    assert send(emu, signed_get(emu, ENDPOINTS_PATH)).status_code == 429
    assert lookup(emu, second).status_code == 200
    calls = [c for c in emu.admin.calls(after=start) if c.api == "modelarts"]
    assert sum(c.counted for c in calls if c.user == "demo-user") == 20
    assert [c.status for c in calls if c.user == "demo-user"][-2:] == [429, 429]
    # The window slides: a minute later the user may call again.
    emu.admin.set_clock_skew(61)
    assert lookup(emu, token).status_code == 200


def test_tenant_limit(emu):
    emu.admin.set_limits(per_tenant_per_minute=5)
    first = get_token(emu)
    second = get_token(emu, name="second-user", password="second-password")
    outsider = get_token(emu, name="outsider", password="outsider-password", domain="other-domain",
                         project={"name": "cn-south-1"})
    for token in (first, first, first, second, second):
        assert lookup(emu, token).status_code == 200
    resp = lookup(emu, second)
    assert resp.status_code == 429
    assert "policy domain over ratelimit, limit:5" in error_of(resp)[1]
    # Another tenant has its own budget.
    resp = lookup(emu, outsider, project=OTHER_PROJECT, service_id=FOREIGN_SVC.service_id)
    assert resp.status_code == 200


def test_retry_after_when_enabled(emu):
    emu.admin.set_limits(per_user_per_minute=2, send_retry_after=True)
    token = get_token(emu)
    lookup(emu, token)
    lookup(emu, token)
    resp = lookup(emu, token)
    assert resp.status_code == 429
    assert 1 <= int(resp.headers["Retry-After"]) <= 60


def test_call_log_records_every_call(emu):
    # `after` (a sequence number) rather than `since`: earlier tests left records stamped with a
    # skewed clock, and `since` compares emulator-clock times.
    previous = emu.admin.calls()
    mark = previous[-1].seq if previous else 0
    token = get_token(emu)
    lookup(emu, token)
    lookup(emu, "bad-token")
    calls = emu.admin.calls(after=mark)
    assert [(c.api, c.status) for c in calls] == [("iam", 201), ("modelarts", 200), ("modelarts", 401)]
    assert calls[1].service_id == SVC.service_id and calls[1].user == "demo-user" and calls[1].counted
    assert not calls[2].counted
    assert emu.admin.calls(after=calls[1].seq)[0].seq == calls[2].seq
