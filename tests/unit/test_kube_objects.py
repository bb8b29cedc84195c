"""Service and EndpointSlice manifests built from endpoints, and the CR spec parse."""

from __future__ import annotations

import pytest

from agent.controller.crd import parse_resource
from agent.controller.objects import Owner, endpoint_slices, service_manifest
from agent.errors import ConfigError
from agent.model import Endpoint
from agent.sources.slices import endpoints_from_slices

OWNER = Owner(name="llm", uid="1234")


def test_slices_hold_at_most_100_endpoints_and_carry_the_labels() -> None:
    eps = [Endpoint(f"192.168.{i // 200}.{i % 200 + 1}", 31997) for i in range(250)]
    slices = endpoint_slices("llm", "apps", "sid", eps, "http", OWNER)
    assert [len(s["endpoints"]) for s in slices] == [100, 100, 50]
    for item in slices:
        labels = item["metadata"]["labels"]
        assert labels["kubernetes.io/service-name"] == "llm"
        assert labels["endpointslice.kubernetes.io/managed-by"] == "modelarts-agent"
        assert item["metadata"]["ownerReferences"][0]["uid"] == "1234"
        assert item["ports"][0] == {"name": "http", "port": 31997, "protocol": "TCP", "appProtocol": "http"}
    assert len({s["metadata"]["name"] for s in slices}) == 3
    assert set(endpoints_from_slices(slices)) == set(eps)


def test_slices_split_by_port_and_address_family() -> None:
    eps = [Endpoint("10.0.0.1", 80), Endpoint("10.0.0.2", 81), Endpoint("fd00::1", 80)]
    slices = endpoint_slices("x", "ns", "sid", eps, "tcp", OWNER)
    assert sorted((s["addressType"], s["ports"][0]["port"]) for s in slices) == [("IPv4", 80), ("IPv4", 81),
                                                                                 ("IPv6", 80)]
    assert "appProtocol" not in slices[0]["ports"][0]


def test_slice_output_is_deterministic() -> None:
    eps = [Endpoint("10.0.0.2", 80), Endpoint("10.0.0.1", 80)]
    assert endpoint_slices("x", "ns", "s", eps, "http", OWNER) == endpoint_slices("x", "ns", "s", eps[::-1], "http",
                                                                                   OWNER)


def test_not_ready_endpoints_are_marked() -> None:
    slices = endpoint_slices("x", "ns", "s", [Endpoint("10.0.0.1", 80, ready=False)], "http", OWNER)
    assert slices[0]["endpoints"][0]["conditions"]["ready"] is False
    assert endpoints_from_slices(slices)[0].ready is False


def test_service_manifest_headless_and_clusterip() -> None:
    svc = service_manifest("llm", "apps", "sid", 80, "http", headless=False, owner=OWNER)
    assert "selector" not in svc["spec"] and "clusterIP" not in svc["spec"]
    headless = service_manifest("llm", "apps", "sid", 80, "grpc", headless=True, owner=OWNER)
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["ports"][0]["appProtocol"] == "kubernetes.io/h2c"


def cr(**spec: object) -> dict[str, object]:
    base = {"projectId": "p", "serviceId": "s", "modelartsUrl": "https://modelarts.example",
            "credentialsSecretRef": {"name": "creds"}}
    base.update(spec)
    return {"metadata": {"name": "llm", "namespace": "apps", "uid": "u", "generation": 3}, "spec": base}


def test_parse_resource_defaults_and_interval() -> None:
    res = parse_resource(cr(pollInterval="2m"))
    assert res.spec.poll_interval_seconds == 120
    assert res.spec.service_type == "ClusterIP" and res.generation == 3
    assert res.service_spec(15).name == "apps--llm"


@pytest.mark.parametrize(("spec", "field"), [
    ({"pollInterval": "soon"}, "pollInterval"),
    ({"allowedCIDRs": ["10.0.0.0/33"]}, "allowedCIDRs"),
    ({"modelartsUrl": "ftp://x"}, "modelartsUrl"),
    ({"port": 70000}, "port"),
])
def test_parse_resource_errors_name_the_field(spec: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_resource(cr(**spec))
    assert field in str(info.value) and "apps/llm" in str(info.value)


def test_long_names_stay_dns_labels() -> None:
    obj = cr()
    obj["metadata"] = {"name": "n" * 60, "namespace": "m" * 60, "uid": "u"}
    key = parse_resource(obj).key
    assert len(key) <= 63
