"""Every hostile address class is rejected with a reason; good entries and tolerated variants pass."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import DiscoveryError
from agent.modelarts.parse import parse_endpoints
from agent.validation import DEFAULT_ALLOWED_CIDRS, Rejection, check_ip, check_port, parse_networks, validate_entry

PRIVATE = parse_networks(DEFAULT_ALLOWED_CIDRS)
WITH_LOOPBACK = parse_networks([*DEFAULT_ALLOWED_CIDRS, "127.0.0.0/8"])


@pytest.mark.parametrize(("ip", "reason"), [
    ("127.0.0.1", "loopback"),
    ("127.1.2.3", "loopback"),
    ("::1", "loopback"),
    ("169.254.169.254", "link_local"),
    ("169.254.0.1", "link_local"),
    ("fe80::1", "link_local"),
    ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"),
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    ("255.255.255.255", "broadcast"),
    ("8.8.8.8", "outside_allowed_cidrs"),
    ("2001:db8::1", "outside_allowed_cidrs"),
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:169.254.169.254", "link_local"),
    ("\uff11\uff12\uff17.0.0.1", "bad_ip"),  # fullwidth digits that int() would accept
    ("192.168.1.1 ", "bad_ip"),
    ("192.168.001.1", "bad_ip"),
    ("fe80::1%eth0", "bad_ip"),
    ("192.168.1", "bad_ip"),
    ("", "bad_ip"),
    (3232235777, "bad_ip"),
    (None, "bad_ip"),
])
def test_hostile_ips_rejected(ip: object, reason: str) -> None:
    result = check_ip(ip, PRIVATE)
    assert isinstance(result, Rejection), f"{ip!r} was accepted"
    assert result.reason == reason


@pytest.mark.parametrize("ip", ["10.1.2.3", "172.16.0.9", "192.168.205.58", "fd00::5"])
def test_private_ips_accepted(ip: str) -> None:
    assert not isinstance(check_ip(ip, PRIVATE), Rejection)


def test_loopback_only_with_explicit_allow() -> None:
    assert not isinstance(check_ip("127.0.0.10", WITH_LOOPBACK), Rejection)
    # A catch-all CIDR is not an explicit allow of loopback or metadata addresses.
    everything = parse_networks(["0.0.0.0/0"])
    assert isinstance(check_ip("127.0.0.10", everything), Rejection)
    assert isinstance(check_ip("169.254.169.254", everything), Rejection)
    assert not isinstance(check_ip("8.8.8.8", everything), Rejection)


@pytest.mark.parametrize(("port", "ok"), [
    (1, True), (65535, True), ("31997", True), (0, False), (65536, False), (-1, False), ("abc", False),
    ("0x50", False), (" 80", False), ("\uff18\uff10", False), (80.0, False), (True, False), (None, False),
    ([80], False),
])
def test_ports(port: object, ok: bool) -> None:
    assert (not isinstance(check_port(port), Rejection)) is ok


def test_schema_validation() -> None:
    assert isinstance(validate_entry({"schema": "ftp", "ip": "10.0.0.1", "port": 1}, PRIVATE), Rejection)
    ok = validate_entry({"schema": "HTTPS", "ip": "10.0.0.1", "port": "443"}, PRIVATE)
    assert not isinstance(ok, Rejection) and ok.schema == "https" and ok.port == 443


def test_parser_canonical_and_variants() -> None:
    canonical = {"service_id": "s", "endpoints": [{"schema": "http", "ip": "192.168.205.58", "port": 31997}]}
    assert [e.address for e in parse_endpoints(canonical, PRIVATE, 10).endpoints] == ["192.168.205.58:31997"]
    variant = {"host_endpoints": [{"schema": "http", "ip": "10.0.0.2", "port": "8080"}]}
    assert parse_endpoints(variant, PRIVATE, 10).endpoints[0].port == 8080


def test_parser_drops_bad_entries_not_the_response() -> None:
    body = {"endpoints": [
        {"schema": "http", "ip": "10.0.0.1", "port": 80},
        {"schema": "http", "ip": "10.0.0.1", "port": 80},
        {"schema": "http", "ip": "169.254.169.254", "port": 80},
        {"schema": "http", "ip": "10.0.0.2", "port": 0},
        "garbage",
    ]}
    parsed = parse_endpoints(body, PRIVATE, 10)
    assert [e.address for e in parsed.endpoints] == ["10.0.0.1:80"]
    assert sorted(r.reason for _, r in parsed.rejected) == ["bad_entry", "bad_port", "duplicate", "link_local"]


def test_parser_caps_oversized_lists() -> None:
    body = {"endpoints": [{"ip": f"10.0.{i // 250}.{i % 250 + 1}", "port": 80} for i in range(50)]}
    parsed = parse_endpoints(body, PRIVATE, 10)
    assert len(parsed.endpoints) == 10
    assert sum(1 for _, r in parsed.rejected if r.reason == "over_cap") == 40


@pytest.mark.parametrize("body", [[], "x", None, {"endpoints": {"a": 1}}, {"nothing": []}])
def test_parser_rejects_bodies_without_a_list(body: object) -> None:
    with pytest.raises(DiscoveryError) as info:
        parse_endpoints(body, PRIVATE, 10)
    assert info.value.kind == "malformed"


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
ENTRY = st.fixed_dictionaries({
    "schema": st.sampled_from(["http", "https", "grpc", "tcp", "ftp", "", 1]) | st.text(max_size=6),
    "ip": st.ip_addresses().map(str) | st.text(max_size=40) | st.integers(),
    "port": st.integers(-5, 70000) | st.text(max_size=6) | st.none() | st.booleans(),
})


@given(st.lists(ENTRY | JSONISH, max_size=30))
def test_parser_fuzz_never_crashes_and_never_admits_invalid(entries: list[object]) -> None:
    parsed = parse_endpoints({"endpoints": entries}, PRIVATE, 25)
    assert len(parsed.endpoints) + len(parsed.rejected) == len(entries)
    for endpoint in parsed.endpoints:
        assert not isinstance(check_ip(endpoint.ip, PRIVATE), Rejection)
        assert 1 <= endpoint.port <= 65535
        assert endpoint.schema in ("http", "https", "grpc", "tcp")
    assert len({(e.ip, e.port) for e in parsed.endpoints}) == len(parsed.endpoints)
