"""The typed resources, checked message by message (no Envoy here; see test_dataplane for that)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from agent.envoy import clusters as clusters_module
from agent.envoy.bootstrap import build_bootstrap, ensure_loopback
from agent.envoy.layout import FileLayout
from agent.envoy.resources import EnvoyResources, build_resources, protocol_of
from agent.envoy.serialize import to_dict
from agent.errors import ConfigError
from agent.model import Endpoint
from tests.envoy.harness import make_config, make_snapshot

EP1 = Endpoint("10.0.0.1", 8080)
EP2 = Endpoint("10.0.0.2", 8080)


def render(services: list[dict[str, Any]], endpoints: dict[str, list[Endpoint]] | None = None,
           splits: list[dict[str, Any]] | None = None, tmp: Path = Path("/tmp/x"), **kw: Any) -> EnvoyResources:
    config = make_config(tmp, 9901, services, splits or [])
    snapshot = make_snapshot(config, endpoints if endpoints is not None else {s["name"]: [EP1, EP2]
                                                                             for s in services}, **kw)
    return build_resources(snapshot, config, FileLayout.for_config(config.envoy).eds_source)


def hcm(resources: EnvoyResources, name: str) -> dict[str, Any]:
    listener = next(lst for lst in resources.listeners if lst.name == name)
    manager = http_connection_manager_pb2.HttpConnectionManager()
    assert listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    return to_dict(manager)


def route(resources: EnvoyResources, name: str) -> dict[str, Any]:
    action: dict[str, Any] = hcm(resources, name)["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    return action


def cluster(resources: EnvoyResources, name: str) -> dict[str, Any]:
    return to_dict(next(c for c in resources.clusters if c.name == name))


def test_defaults_disable_total_timeout_and_body_limit() -> None:
    res = render([{"name": "svc", "listen_port": 8000}])
    assert route(res, "svc")["timeout"] == "0s"  # explicit: Envoy's 15 s default must not apply
    manager = hcm(res, "svc")
    assert manager["stream_idle_timeout"] == "300s"
    assert [f["name"] for f in manager["http_filters"]] == ["envoy.filters.http.router"]
    assert cluster(res, "svc")["connect_timeout"] == "2s"


def test_explicit_timeouts_and_body_limit() -> None:
    res = render([{"name": "svc", "listen_port": 8000,
                   "timeouts": {"request_seconds": 30, "idle_seconds": 0, "max_request_bytes": 1024,
                                "connect_seconds": 0.5}}])
    assert route(res, "svc")["timeout"] == "30s"
    manager = hcm(res, "svc")
    assert manager["stream_idle_timeout"] == "0s"
    buffer_filter = manager["http_filters"][0]
    assert buffer_filter["name"] == "envoy.filters.http.buffer"
    assert buffer_filter["typed_config"]["max_request_bytes"] == 1024
    assert manager["http_filters"][-1]["name"] == "envoy.filters.http.router"
    assert cluster(res, "svc")["connect_timeout"] == "0.500s"


def test_retry_policy_only_for_idempotent_requests_or_idempotency_key() -> None:
    policy = route(render([{"name": "svc", "listen_port": 8000}]), "svc")["retry_policy"]
    matchers = policy["retriable_request_headers"]
    methods = [m["string_match"]["exact"] for m in matchers if m["name"] == ":method"]
    assert methods == ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"]
    assert {"name": "idempotency-key", "present_match": True} in matchers
    assert policy["retry_host_predicate"][0]["name"] == "envoy.retry_host_predicates.previous_hosts"
    assert policy["num_retries"] == 2
    assert policy["retriable_status_codes"] == [503]


def test_retry_policy_variants() -> None:
    res = render([{"name": "any", "listen_port": 8000,
                   "retries": {"idempotent_only": False, "per_try_timeout_seconds": 3}},
                  {"name": "off", "listen_port": 8001, "retries": {"enabled": False}}])
    policy = route(res, "any")["retry_policy"]
    assert "retriable_request_headers" not in policy
    assert policy["per_try_timeout"] == "3s"
    assert "retry_policy" not in route(res, "off")
    thresholds = cluster(res, "off")["circuit_breakers"]["thresholds"][0]
    assert "retry_budget" not in thresholds
    budget = cluster(res, "any")["circuit_breakers"]["thresholds"][0]["retry_budget"]
    assert budget == {"budget_percent": {"value": 20.0}, "min_retry_concurrency": 3}


def test_circuit_breakers_and_outlier_detection() -> None:
    res = render([{"name": "svc", "circuit_breakers": {"max_connections": 10, "max_pending_requests": 11,
                                                        "max_requests": 12, "max_retries": 3}},
                  {"name": "raw", "outlier_detection": {"enabled": False}}])
    data = cluster(res, "svc")
    thresholds = data["circuit_breakers"]["thresholds"][0]
    assert (thresholds["max_connections"], thresholds["max_pending_requests"], thresholds["max_requests"],
            thresholds["max_retries"]) == (10, 11, 12, 3)
    od = data["outlier_detection"]
    assert od["split_external_local_origin_errors"] is True
    assert od["consecutive_local_origin_failure"] == 2
    assert od["enforcing_consecutive_gateway_failure"] == 100
    assert od["consecutive_5xx"] == 5
    assert "outlier_detection" not in cluster(res, "raw")


@pytest.mark.parametrize(("lb", "extension"), [
    ({"policy": "least_request"}, "least_request"),
    ({"policy": "round_robin"}, "round_robin"),
    ({"policy": "random"}, "random"),
    ({"policy": "ring_hash", "hash_key": {"header": "X-User"}}, "ring_hash"),
    ({"policy": "maglev", "hash_key": {"source_ip": True}}, "maglev"),
])
def test_lb_policies(lb: dict[str, Any], extension: str) -> None:
    res = render([{"name": "svc", "listen_port": 8000, "lb": lb}])
    policy = cluster(res, "svc")["load_balancing_policy"]["policies"][0]["typed_extension_config"]
    assert policy["name"] == f"envoy.load_balancing_policies.{extension}"
    hashing = route(res, "svc").get("hash_policy")
    if lb["policy"] == "ring_hash":
        assert hashing == [{"header": {"header_name": "x-user"}}]
    elif lb["policy"] == "maglev":
        assert hashing == [{"connection_properties": {"source_ip": True}}]
    else:
        assert hashing is None


def test_least_request_choice_count_and_cookie_hash() -> None:
    res = render([{"name": "lr", "lb": {"policy": "least_request", "choice_count": 3}},
                  {"name": "ck", "listen_port": 8000, "lb": {"policy": "ring_hash", "hash_key": {"cookie": "sess"}}}])
    typed = cluster(res, "lr")["load_balancing_policy"]["policies"][0]["typed_extension_config"]["typed_config"]
    assert typed["choice_count"] == 3
    assert route(res, "ck")["hash_policy"] == [{"cookie": {"name": "sess", "ttl": "0s", "path": "/"}}]


def test_health_checks() -> None:
    res = render([{"name": "h", "health_check": {"type": "http", "path": "/ping", "interval_seconds": 1}},
                  {"name": "t", "protocol": "tcp", "health_check": {"type": "tcp"}},
                  {"name": "g", "protocol": "grpc", "health_check": {"type": "http"}}])
    http = cluster(res, "h")["health_checks"][0]
    assert http["http_health_check"] == {"path": "/ping"}  # HTTP1 is the enum default
    assert http["interval"] == http["no_traffic_interval"] == "1s"
    assert cluster(res, "t")["health_checks"][0]["tcp_health_check"] == {}
    assert cluster(res, "g")["health_checks"][0]["http_health_check"]["codec_client_type"] == "HTTP2"


def test_protocols_pick_listener_filter_and_upstream_protocol() -> None:
    res = render([{"name": "g", "listen_port": 8000, "protocol": "grpc"},
                  {"name": "t", "listen_port": 8001, "protocol": "tcp", "timeouts": {"idle_seconds": 60},
                   "lb": {"policy": "maglev", "hash_key": {"source_ip": True}}},
                  {"name": "h", "listen_port": 8002}])
    options_key = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    grpc_options = cluster(res, "g")["typed_extension_protocol_options"][options_key]
    assert grpc_options["explicit_http_config"] == {"http2_protocol_options": {}}
    http_options = cluster(res, "h")["typed_extension_protocol_options"][options_key]
    assert http_options["explicit_http_config"] == {"http_protocol_options": {}}
    assert "typed_extension_protocol_options" not in cluster(res, "t")
    listener = next(lst for lst in res.listeners if lst.name == "t")
    proxy = tcp_proxy_pb2.TcpProxy()
    assert listener.filter_chains[0].filters[0].typed_config.Unpack(proxy)
    assert proxy.cluster == "t"
    assert proxy.idle_timeout.seconds == 60
    assert proxy.max_connect_attempts.value == 3
    assert proxy.hash_policy[0].HasField("source_ip")


def test_auto_protocol_follows_endpoint_schema() -> None:
    config = make_config(Path("/tmp/x"), 9901, [{"name": "svc"}])
    snap = make_snapshot(config, {"svc": [Endpoint("10.0.0.1", 1, "https"), Endpoint("10.0.0.2", 1, "https"),
                                          Endpoint("10.0.0.3", 1, "http")]})
    assert protocol_of(config.services[0], snap.services["svc"]) == "https"
    empty = make_snapshot(config, {})
    assert protocol_of(config.services[0], empty.services["svc"]) == "http"
    tie = make_snapshot(config, {"svc": [Endpoint("10.0.0.1", 1, "tcp"), Endpoint("10.0.0.2", 1, "grpc")]})
    assert protocol_of(config.services[0], tie.services["svc"]) == "grpc"  # ties follow the fixed schema order


def test_upstream_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    https = [Endpoint("10.0.0.1", 443, "https")]
    res = render([{"name": "v", "tls": {"ca_file": str(ca), "sni": "model.example"}},
                  {"name": "i", "tls": {"insecure_skip_verify": True}},
                  {"name": "p", "protocol": "http"}], {"v": https, "i": https, "p": https})
    socket = cluster(res, "v")["transport_socket"]
    assert socket["name"] == "envoy.transport_sockets.tls"
    context = socket["typed_config"]
    assert context["sni"] == "model.example"
    validation = context["common_tls_context"]["validation_context"]
    assert validation["trusted_ca"] == {"filename": str(ca)}
    assert validation["match_typed_subject_alt_names"] == [{"san_type": "DNS",
                                                            "matcher": {"exact": "model.example"}}]
    assert "validation_context" not in cluster(res, "i")["transport_socket"]["typed_config"]["common_tls_context"]
    assert "transport_socket" not in cluster(res, "p")  # explicit protocol wins over the endpoints' schema
    monkeypatch.setattr(clusters_module, "SYSTEM_CA_BUNDLES", (str(tmp_path / "none.pem"),))
    with pytest.raises(ConfigError, match=r"tls\.ca_file"):
        render([{"name": "n", "protocol": "https"}])


def test_endpoints_not_ready_are_left_out_and_unsynced_services_get_empty_clusters() -> None:
    res = render([{"name": "a", "listen_port": 8000}, {"name": "b"}],
                 {"a": [EP2, Endpoint("10.0.0.3", 8080, ready=False), EP1, EP1]}, unsynced=["b"])
    a, b = res.load_assignments
    hosts = [e.endpoint.address.socket_address.address for e in a.endpoints[0].lb_endpoints]
    assert hosts == ["10.0.0.1", "10.0.0.2"]
    assert b.cluster_name == "b"
    assert len(b.endpoints) == 0
    assert res.cluster_names == ("a", "b")
    assert res.listener_names == ("a",)  # b has no listen_port: a cluster only


def test_cluster_uses_eds_from_its_own_file() -> None:
    eds = cluster(render([{"name": "svc"}]), "svc")["eds_cluster_config"]
    assert eds["service_name"] == "svc"
    assert eds["eds_config"]["path_config_source"] == {"path": "/tmp/x/eds/svc.json",
                                                       "watched_directory": {"path": "/tmp/x/eds"}}
    assert eds["eds_config"]["resource_api_version"] == "V3"


def test_split_listener_weights_and_skips_missing_or_zero_backends() -> None:
    services = [{"name": "blue"}, {"name": "green"}, {"name": "grey"}]
    splits = [{"name": "front", "listen_port": 9000, "backends": [
        {"service": "blue", "weight": 80}, {"service": "green", "weight": 20}, {"service": "grey", "weight": 0}]}]
    res = render(services, splits=splits)
    weighted = route(res, "front")["weighted_clusters"]["clusters"]
    assert weighted == [{"name": "blue", "weight": 80}, {"name": "green", "weight": 20}]
    config = make_config(Path("/tmp/x"), 9901, services, splits)
    partial = make_snapshot(make_config(Path("/tmp/x"), 9901, [{"name": "green"}]), {"green": [EP1]})
    res2 = build_resources(partial, config, FileLayout.for_config(config.envoy).eds_source)
    assert route(res2, "front")["weighted_clusters"]["clusters"] == [{"name": "green", "weight": 20}]


def test_tcp_split_uses_tcp_proxy_weighted_clusters() -> None:
    res = render([{"name": "a", "protocol": "tcp"}, {"name": "b", "protocol": "tcp"}],
                 splits=[{"name": "t", "listen_port": 9000, "backends": [{"service": "a", "weight": 3},
                                                                         {"service": "b", "weight": 1}]}])
    proxy = tcp_proxy_pb2.TcpProxy()
    assert res.listeners[0].filter_chains[0].filters[0].typed_config.Unpack(proxy)
    assert [(c.name, c.weight) for c in proxy.weighted_clusters.clusters] == [("a", 3), ("b", 1)]


def test_route_messages_are_typed() -> None:
    # Guard against accidental dict/str templating: the route is a real RouteAction message.
    res = render([{"name": "svc", "listen_port": 8000}])
    manager = http_connection_manager_pb2.HttpConnectionManager()
    res.listeners[0].filter_chains[0].filters[0].typed_config.Unpack(manager)
    action = manager.route_config.virtual_hosts[0].routes[0].route
    assert isinstance(action, route_components_pb2.RouteAction)
    assert action.HasField("timeout")


@pytest.mark.parametrize("address", ["127.0.0.1", "127.1.2.3", "::1"])
def test_admin_on_loopback_is_accepted(address: str) -> None:
    ensure_loopback(address)


@pytest.mark.parametrize("address", ["0.0.0.0", "10.0.0.1", "::", "localhost", ""])
def test_admin_elsewhere_is_refused(address: str) -> None:
    with pytest.raises(ConfigError, match="loopback"):
        ensure_loopback(address)


def test_bootstrap_points_at_absolute_output_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = make_config(Path("run/envoy"), 9911, [])
    data = to_dict(build_bootstrap(config.envoy))
    assert data["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9911}
    cds = data["dynamic_resources"]["cds_config"]["path_config_source"]
    lds = data["dynamic_resources"]["lds_config"]["path_config_source"]
    assert cds == {"path": f"{tmp_path}/run/envoy/cds.json", "watched_directory": {"path": f"{tmp_path}/run/envoy"}}
    assert lds["path"] == f"{tmp_path}/run/envoy/lds.json"
    assert data["node"] == {"id": "modelarts-agent", "cluster": "modelarts-sidecar"}
    bad = config.model_copy(update={"envoy": config.envoy.model_copy(update={"admin_address": "0.0.0.0"})})
    with pytest.raises(ConfigError):
        build_bootstrap(bad.envoy)
