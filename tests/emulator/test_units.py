"""Unit tests of the emulator's pure parts: scenario validation, AK/SK verification, sliding windows."""

from __future__ import annotations

import calendar
import time

import pytest
import requests
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer
from hypothesis import given, settings
from hypothesis import strategies as st
from modelarts_emulator.config import (
    DEFAULT_AK,
    DEFAULT_SK,
    EmulatorConfig,
    LimitsConfig,
    ScenarioError,
    ServiceConfig,
)
from modelarts_emulator.faults import FaultBoard, FaultSpec
from modelarts_emulator.signature import IncomingRequest, SignatureError, verify
from modelarts_emulator.throttle import RateLimiter, SlidingWindow

HOST = "127.0.0.1:8443"
PATH = "/v1/0123456789abcdef0123456789abcdef/services/abc-123/predict/endpoints"


def sign(method="GET", path=PATH, query=(("type", "host_endpoints"),), body="", headers=None, sk=DEFAULT_SK,
         date=None, project_id=None):
    header_params = {"Content-Type": "application/json", **(headers or {})}
    if date is not None:
        header_params["X-Sdk-Date"] = date
    req = SdkRequest(method, "https", HOST, path, query_params=list(query), header_params=header_params, body=body)
    creds = BasicCredentials(DEFAULT_AK, sk, project_id)
    if project_id:
        creds.sign_request(req)  # the SDK's own path: adds X-Project-Id, then signs
    else:
        Signer(creds).sign(req)
    return req


def incoming(req, method=None, path=None, query=None, body=None, drop=(), override=None):
    raw_path, _, raw_query = req.uri.partition("?")
    headers = {k.lower(): v for k, v in req.header_params.items() if k.lower() not in drop}
    headers.update(override or {})
    payload = req.body if isinstance(req.body, bytes) else (req.body or "").encode()
    return IncomingRequest(
        method=method or req.method, scheme="https", path=path or raw_path,
        query_string=raw_query if query is None else query, headers=headers,
        body=payload if body is None else body,
    )


def lookup(ak):
    return DEFAULT_SK if ak == DEFAULT_AK else None


def now_of(req):
    return float(calendar.timegm(time.strptime(req.header_params["X-Sdk-Date"], "%Y%m%dT%H%M%SZ")))


def test_sdk_signed_request_verifies():
    req = sign()
    assert verify(incoming(req), lookup, now_of(req), 900) == DEFAULT_AK


def test_sdk_credentials_path_with_project_header_and_body_verifies():
    req = sign(method="POST", body='{"a": 1}', project_id="0123456789abcdef0123456789abcdef",
               query=(("b", "x y"), ("a", "1/2")))
    assert "x-project-id" in req.header_params["Authorization"]
    assert verify(incoming(req), lookup, now_of(req), 900) == DEFAULT_AK


@pytest.mark.parametrize(
    "tamper",
    [
        {"path": PATH.replace("abc-123", "abc-124")},
        {"query": "type=host_endpoints&extra=1"},
        {"query": "type=other"},
        {"method": "POST"},
        {"body": b'{"a": 2}'},
        {"override": {"host": "127.0.0.2:8443"}},
        {"drop": ("host",)},
    ],
)
def test_tampered_requests_are_refused(tamper):
    req = sign(body="")
    with pytest.raises(SignatureError, match="verify aksk signature fail"):
        verify(incoming(req, **tamper), lookup, now_of(req), 900)


def test_wrong_signature_and_wrong_secret_are_refused():
    req = sign()
    auth = req.header_params["Authorization"]
    flipped = auth[:-1] + ("0" if auth[-1] != "0" else "1")
    with pytest.raises(SignatureError, match="verify aksk signature fail"):
        verify(incoming(req, override={"authorization": flipped}), lookup, now_of(req), 900)
    other = sign(sk="not-the-secret")
    with pytest.raises(SignatureError, match="verify aksk signature fail"):
        verify(incoming(other), lookup, now_of(other), 900)


def test_unsigned_date_or_unknown_ak_or_bad_header_refused():
    req = sign()
    # Claiming fewer signed headers than the signer used (x-sdk-date left out) must fail.
    weakened = req.header_params["Authorization"].replace("content-type;host;x-sdk-date", "content-type;host")
    with pytest.raises(SignatureError):
        verify(incoming(req, override={"authorization": weakened}), lookup, now_of(req), 900)
    with pytest.raises(SignatureError, match="ak not found"):
        verify(incoming(req), lambda ak: None, now_of(req), 900)
    with pytest.raises(SignatureError, match="invalid Authorization"):
        verify(incoming(req, override={"authorization": "Bearer x"}), lookup, now_of(req), 900)


def test_date_skew_is_refused_even_with_a_valid_signature():
    req = sign(date="20200101T000000Z")
    with pytest.raises(SignatureError, match="too far from the server time"):
        verify(incoming(req), lookup, time.time(), 900)
    # ...and accepted by a server whose clock agrees with it.
    assert verify(incoming(req), lookup, now_of(req) + 899, 900) == DEFAULT_AK


def test_sliding_window_counts_only_admitted_and_slides():
    window = SlidingWindow(limit=3, window=60)
    for t in (0, 1, 2):
        assert window.allows("u", t)
        window.record("u", t)
    assert not window.allows("u", 59.9)
    assert window.retry_after("u", 30) == pytest.approx(30)
    assert window.allows("u", 60.0)  # the t=0 event has left the window


def test_rate_limiter_user_then_tenant():
    limiter = RateLimiter(LimitsConfig(per_user_per_minute=2, per_tenant_per_minute=3))
    assert limiter.admit("u1", "d", 0) is None
    assert limiter.admit("u1", "d", 0) is None
    refused = limiter.admit("u1", "d", 0)
    assert refused is not None and refused.policy == "user"
    assert refused.message.endswith("policy user over ratelimit, limit:2, time:1 minute")
    assert limiter.admit("u2", "d", 0) is None
    refused = limiter.admit("u2", "d", 0)
    assert refused is not None and refused.policy == "domain" and refused.limit == 3


def test_scenario_validation_catches_mistakes():
    with pytest.raises(ScenarioError, match="per_user_per_minute"):
        EmulatorConfig.parse({"limits": {"per_user_per_minute": 0}})
    with pytest.raises(ScenarioError, match="Extra inputs"):
        EmulatorConfig.parse({"servces": []})
    with pytest.raises(ScenarioError, match="belongs to no user"):
        EmulatorConfig.parse({"services": [{"name": "a", "project_id": "nope"}]})
    with pytest.raises(ScenarioError, match="bind_addresses"):
        EmulatorConfig.parse({"services": [{"name": "a", "instances": 2, "bind_addresses": ["127.0.0.50"]}]})
    with pytest.raises(ScenarioError, match="duplicate"):
        EmulatorConfig.parse({"services": [{"name": "a"}, {"name": "a"}]})
    cfg = EmulatorConfig(services=[ServiceConfig(name="a")])
    assert cfg.services[0].project_id == cfg.users[0].project_id
    assert "demo-password" not in repr(cfg) and DEFAULT_SK not in repr(cfg)


def test_scenario_yaml(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("services:\n  - name: svc\n    schema: tcp\n    instances: 3\nlimits:\n  send_retry_after: true\n")
    cfg = EmulatorConfig.from_yaml(path)
    assert cfg.services[0].schema_ == "tcp" and cfg.services[0].instances == 3 and cfg.limits.send_retry_after
    path.write_text("services: [\n")
    with pytest.raises(ScenarioError, match="not valid YAML"):
        EmulatorConfig.from_yaml(path)
    with pytest.raises(ScenarioError, match="cannot read"):
        EmulatorConfig.from_yaml(tmp_path / "missing.yaml")


def test_fault_board_count_duration_and_targets():
    board = FaultBoard()
    board.arm(FaultSpec(kind="empty", service_id="s1", count=2), now=0)
    board.arm(FaultSpec(kind="5xx", duration_seconds=10, applies_to="details"), now=0)
    assert board.take("s2", "endpoints", 1, throttle=False) is None
    assert board.take("s1", "endpoints", 1, throttle=False).spec.kind == "empty"
    assert board.take("s1", "endpoints", 1, throttle=False).spec.kind == "empty"
    assert board.take("s1", "endpoints", 1, throttle=False) is None  # count used up
    assert board.take("s2", "details", 9, throttle=False).spec.kind == "5xx"
    assert board.take("s2", "details", 10.5, throttle=False) is None  # duration over
    with pytest.raises(ValueError, match="only applies to"):
        FaultSpec(kind="timeout", status=502)


# "." and ".." are excluded: HTTP clients normalise them away, so no server could verify them.
_SEGMENT = st.text(alphabet="abcXYZ019-_.~ é", min_size=1, max_size=8).filter(lambda s: s not in (".", ".."))
_TEXT = st.text(alphabet="abcXYZ019 -_.~!*'()&=+/:@,;é中", min_size=1, max_size=8)


@settings(max_examples=60, deadline=None)
@given(
    segments=st.lists(_SEGMENT, min_size=1, max_size=4),
    query=st.lists(st.tuples(_TEXT, _TEXT), max_size=4),
    body=st.binary(max_size=64),
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
)
def test_sdk_signature_survives_the_wire_and_breaks_on_change(segments, query, body, method):
    """Sign with the SDK, send the URL through requests' encoding, and verify as the server sees it."""
    path = "/v1/" + "/".join(segments)
    req = sign(method=method, path=path, query=tuple(query), body=body)
    prepared = requests.Request(method, f"https://{HOST}{req.uri}").prepare()
    raw_path, _, raw_query = prepared.path_url.partition("?")
    headers = {k.lower(): v for k, v in req.header_params.items()}
    wire = IncomingRequest(method=method, scheme="https", path=raw_path, query_string=raw_query,
                           headers=headers, body=body)
    assert verify(wire, lookup, now_of(req), 900) == DEFAULT_AK
    changed = IncomingRequest(method=method, scheme="https", path=raw_path + "x", query_string=raw_query,
                              headers=headers, body=body)
    with pytest.raises(SignatureError):
        verify(changed, lookup, now_of(req), 900)
    changed_query = IncomingRequest(method=method, scheme="https", path=raw_path,
                                    query_string=raw_query + "&extra=1", headers=headers, body=body)
    with pytest.raises(SignatureError):
        verify(changed_query, lookup, now_of(req), 900)
