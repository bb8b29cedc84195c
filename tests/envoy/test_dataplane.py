"""Real Envoy 1.40, real upstreams: the files the sink writes must make Envoy route as configured.

Every scenario starts its own Envoy (stopped at teardown) on free loopback ports, with instances on
their own 127.0.0.x addresses, and feeds snapshots straight into `EnvoyFileSink`.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import pytest

from agent.sinks.envoy.files import EnvoyFileSink
from tests.envoy.conftest import Instances, Pki, StartEnvoy
from tests.envoy.harness import (
    SteadyLoad,
    endpoint,
    free_port,
    make_config,
    make_snapshot,
    send_requests,
    tcp_exchange,
    wait_until,
)

pytestmark = pytest.mark.envoy


def test_requests_spread_over_all_instances(out_dir: Path, admin_port: int, instances: Instances,
                                            start_envoy: StartEnvoy) -> None:
    port = free_port()
    config = make_config(out_dir, admin_port, [{"name": "svc", "listen_port": port}])
    ups = [instances.http(f"i{n}") for n in range(4)]
    EnvoyFileSink(config).publish(make_snapshot(config, {"svc": [endpoint(u) for u in ups]}))
    envoy = start_envoy(config)
    envoy.wait_for_hosts({"svc": [u.address for u in ups]})
    result = send_requests(port, 400, concurrency=8)
    assert result.failures == []
    assert set(result.answered) == {u.instance_id for u in ups}
    assert min(result.answered.values()) >= 40, result.answered


def test_added_endpoint_gets_traffic_within_two_seconds(out_dir: Path, admin_port: int, instances: Instances,
                                                        start_envoy: StartEnvoy) -> None:
    port = free_port()
    config = make_config(out_dir, admin_port, [{"name": "svc", "listen_port": port}])
    ups = [instances.http(f"i{n}") for n in range(2)]
    sink = EnvoyFileSink(config)
    sink.publish(make_snapshot(config, {"svc": [endpoint(u) for u in ups]}))
    start_envoy(config).wait_for_hosts({"svc": [u.address for u in ups]})
    newcomer = instances.http("new")
    started = time.monotonic()
    sink.publish(make_snapshot(config, {"svc": [endpoint(u) for u in [*ups, newcomer]]}, version=2))
    served = wait_until(lambda: "new" in send_requests(port, 12, concurrency=3).answered, timeout=2.0, interval=0)
    assert served, "the new instance got no traffic within 2 s of the file rewrite"
    assert time.monotonic() - started < 2.5


def test_removed_endpoint_gets_no_new_requests(out_dir: Path, admin_port: int, instances: Instances,
                                               start_envoy: StartEnvoy) -> None:
    port = free_port()
    config = make_config(out_dir, admin_port, [{"name": "svc", "listen_port": port}])
    ups = [instances.http(f"i{n}") for n in range(3)]
    sink = EnvoyFileSink(config)
    sink.publish(make_snapshot(config, {"svc": [endpoint(u) for u in ups]}))
    envoy = start_envoy(config)
    envoy.wait_for_hosts({"svc": [u.address for u in ups]})
    assert set(send_requests(port, 60, concurrency=3).answered) == {"i0", "i1", "i2"}
    sink.publish(make_snapshot(config, {"svc": [endpoint(u) for u in ups[:2]]}, version=2))
    envoy.wait_for_hosts({"svc": [u.address for u in ups[:2]]}, timeout=2.0)
    served_before = ups[2].total
    result = send_requests(port, 300, concurrency=6)
    assert result.failures == []
    assert "i2" not in result.answered
    assert ups[2].total == served_before  # counted on the instance itself, not only from responses


def test_least_request_sends_fewer_requests_to_a_slow_instance(out_dir: Path, admin_port: int,
                                                               instances: Instances, start_envoy: StartEnvoy) -> None:
    port = free_port()
    config = make_config(out_dir, admin_port, [{"name": "svc", "listen_port": port}])  # least_request is the default
    fast = [instances.http(f"fast{n}", delay=0.005) for n in range(4)]
    slow = instances.http("slow", delay=0.3)
    EnvoyFileSink(config).publish(make_snapshot(config, {"svc": [endpoint(u) for u in [*fast, slow]]}))
    start_envoy(config).wait_for_hosts({"svc": [u.address for u in [*fast, slow]]})
    result = send_requests(port, 300, concurrency=8)
    assert result.failures == []
    mean_fast = statistics.mean(result.answered[u.instance_id] for u in fast)
    # Round robin would give the slow one as much as each fast one; least_request must give it far less.
    # (Power of two choices still picks it when both draws land on it: about 1 in 25 here.)
    assert result.answered["slow"] < 0.5 * mean_fast, result.answered


def test_tcp_proxy(out_dir: Path, admin_port: int, instances: Instances, start_envoy: StartEnvoy) -> None:
    port = free_port()
    config = make_config(out_dir, admin_port, [{"name": "raw", "listen_port": port, "lb": {"policy": "round_robin"}}])
    echoes = [instances.tcp(f"echo{n}") for n in range(2)]
    EnvoyFileSink(config).publish(make_snapshot(config, {"raw": [endpoint(e, schema="tcp") for e in echoes]}))
    envoy = start_envoy(config)
    envoy.wait_for_hosts({"raw": [e.address for e in echoes]})
    envoy.wait_for_listeners(["raw"])
    answers = [tcp_exchange(port, f"hello-{n}".encode()) for n in range(10)]
    assert all(a.endswith(f":hello-{n}".encode()) for n, a in enumerate(answers)), answers
    assert {a.split(b":")[0] for a in answers} == {b"echo0", b"echo1"}
    static = envoy.config_dump("dynamic_listeners")
    assert "tcp_proxy" in str(static)


def test_https_upstream_with_private_ca_and_sni(out_dir: Path, admin_port: int, instances: Instances,
                                               start_envoy: StartEnvoy, pki: Pki) -> None:
    good, bad = free_port(), free_port()
    config = make_config(out_dir, admin_port, [
        {"name": "secure", "listen_port": good, "tls": {"ca_file": str(pki.ca_file), "sni": "instance.test"}},
        # Same instances, but expecting another name: Envoy must refuse the certificate.
        {"name": "mismatch", "listen_port": bad, "tls": {"ca_file": str(pki.ca_file), "sni": "other.test"},
         "retries": {"enabled": False}},
    ])
    ups = [instances.http(f"tls{n}", tls=pki.server_context) for n in range(2)]
    eps = [endpoint(u, schema="https") for u in ups]  # protocol "auto" follows the endpoints' schema
    EnvoyFileSink(config).publish(make_snapshot(config, {"secure": eps, "mismatch": eps}))
    envoy = start_envoy(config)
    envoy.wait_for_hosts({"secure": [u.address for u in ups]})
    result = send_requests(good, 40, concurrency=4)
    assert result.failures == []
    assert set(result.answered) == {"tls0", "tls1"}
    refused = send_requests(bad, 6, concurrency=2)
    assert refused.answered == {} and refused.statuses[503] == 6
    assert envoy.stats("ssl.fail_verify_san").get("cluster.mismatch.ssl.fail_verify_san", 0) > 0


def test_weighted_split_ratio(out_dir: Path, admin_port: int, instances: Instances, start_envoy: StartEnvoy) -> None:
    port = free_port()
    config = make_config(out_dir, admin_port, [{"name": "blue"}, {"name": "green"}],
                         [{"name": "canary", "listen_port": port,
                           "backends": [{"service": "blue", "weight": 80}, {"service": "green", "weight": 20}]}])
    blue = [instances.http(f"blue{n}") for n in range(2)]
    green = [instances.http("green0")]
    EnvoyFileSink(config).publish(make_snapshot(config, {"blue": [endpoint(u) for u in blue],
                                                         "green": [endpoint(u) for u in green]}))
    envoy = start_envoy(config)
    envoy.wait_for_hosts({"blue": [u.address for u in blue], "green": [u.address for u in green]})
    assert envoy.listeners() == {"canary"}  # the services have no listen_port: clusters only
    result = send_requests(port, 1000, concurrency=8)
    assert result.failures == []
    blue_share = sum(n for i, n in result.answered.items() if i.startswith("blue")) / 1000
    assert 0.75 <= blue_share <= 0.85, result.answered


def test_envoy_keeps_serving_when_the_agent_stops(out_dir: Path, admin_port: int, instances: Instances,
                                                  start_envoy: StartEnvoy) -> None:
    port = free_port()
    config = make_config(out_dir, admin_port, [{"name": "svc", "listen_port": port}])
    ups = [instances.http(f"i{n}") for n in range(2)]
    sink = EnvoyFileSink(config)
    sink.publish(make_snapshot(config, {"svc": [endpoint(u) for u in ups]}))
    envoy = start_envoy(config)
    envoy.wait_for_hosts({"svc": [u.address for u in ups]})
    # The agent dies mid-write: its temp file stays behind, never renamed, and nobody writes again.
    del sink
    (out_dir / ".cds.json.crashed.tmp").write_text('{"resources": [')
    (out_dir / "eds" / ".svc.json.crashed.tmp").write_text("")
    time.sleep(1.0)
    result = send_requests(port, 200, concurrency=4)
    assert result.failures == []
    assert set(result.answered) == {"i0", "i1"}
    assert set(envoy.rejected_updates().values()) == {0}
    EnvoyFileSink(config)  # the next agent sweeps the crumbs
    assert not list(out_dir.rglob("*.tmp"))


def test_restarted_envoy_picks_up_the_current_files(out_dir: Path, admin_port: int, instances: Instances,
                                                    start_envoy: StartEnvoy) -> None:
    port = free_port()
    config = make_config(out_dir, admin_port, [{"name": "svc", "listen_port": port}])
    a, b, c = (instances.http(n) for n in "abc")
    sink = EnvoyFileSink(config)
    sink.publish(make_snapshot(config, {"svc": [endpoint(a), endpoint(b)]}))
    first = start_envoy(config)
    first.wait_for_hosts({"svc": [a.address, b.address]})
    first.stop()
    sink.publish(make_snapshot(config, {"svc": [endpoint(b), endpoint(c)]}, version=2))  # while Envoy is down
    second = start_envoy(config)
    second.wait_for_hosts({"svc": [b.address, c.address]})
    result = send_requests(port, 100, concurrency=4)
    assert result.failures == []
    assert set(result.answered) == {"b", "c"}


def test_one_of_four_instances_killed_under_load_fails_no_request(out_dir: Path, admin_port: int,
                                                                  instances: Instances,
                                                                  start_envoy: StartEnvoy) -> None:
    port = free_port()
    config = make_config(out_dir, admin_port, [{"name": "svc", "listen_port": port}])
    ups = [instances.http(f"i{n}", delay=0.002) for n in range(4)]
    EnvoyFileSink(config).publish(make_snapshot(config, {"svc": [endpoint(u) for u in ups]}))
    envoy = start_envoy(config)
    envoy.wait_for_hosts({"svc": [u.address for u in ups]})
    with SteadyLoad(port, concurrency=6, max_seconds=15) as load:
        time.sleep(1.0)
        before = ups[0].total
        ups[0].kill()  # still listed: discovery has not noticed yet
        time.sleep(2.0)
    result = load.result
    assert before > 20, "the victim had no traffic before it died"
    assert result.failures == [], result.failures[:5]
    assert result.attempts > 300
    retried = envoy.stats("upstream_rq_retry$").get("cluster.svc.upstream_rq_retry", 0)
    ejected = envoy.stats("outlier_detection.ejections_enforced_total").get(
        "cluster.svc.outlier_detection.ejections_enforced_total", 0)
    assert retried > 0 and ejected >= 1, (retried, ejected)


@pytest.mark.parametrize("policy", ["ring_hash", "maglev"])
def test_hash_policy_sticks_a_header_value_to_one_instance(out_dir: Path, admin_port: int, instances: Instances,
                                                           start_envoy: StartEnvoy, policy: str) -> None:
    port = free_port()
    config = make_config(out_dir, admin_port, [{"name": "svc", "listen_port": port,
                                                "lb": {"policy": policy, "hash_key": {"header": "x-session"}}}])
    ups = [instances.http(f"i{n}") for n in range(4)]
    EnvoyFileSink(config).publish(make_snapshot(config, {"svc": [endpoint(u) for u in ups]}))
    start_envoy(config).wait_for_hosts({"svc": [u.address for u in ups]})
    owners = {}
    for session in range(12):
        result = send_requests(port, 10, concurrency=2, headers={"x-session": f"user-{session}"})
        assert result.failures == []
        assert len(result.answered) == 1, (session, result.answered)
        owners[session] = next(iter(result.answered))
    assert len(set(owners.values())) >= 2  # hashing, not everything pinned to one instance


def test_retries_only_for_idempotent_requests(out_dir: Path, admin_port: int, instances: Instances,
                                              start_envoy: StartEnvoy) -> None:
    port = free_port()
    config = make_config(out_dir, admin_port, [{"name": "svc", "listen_port": port, "lb": {"policy": "round_robin"},
                                                "outlier_detection": {"enabled": False}}])
    ups = [instances.http("ok0"), instances.http("ok1"), instances.http("broken", status=503)]
    EnvoyFileSink(config).publish(make_snapshot(config, {"svc": [endpoint(u) for u in ups]}))
    start_envoy(config).wait_for_hosts({"svc": [u.address for u in ups]})
    gets = send_requests(port, 60, concurrency=3)
    assert gets.failures == []
    posts = send_requests(port, 60, concurrency=3, method="POST", body=b"{}")
    assert posts.statuses[503] >= 8, posts.statuses  # not retried: about a third hit the broken one
    keyed = send_requests(port, 60, concurrency=3, method="POST", body=b"{}",
                          headers_for=lambda i: {"Idempotency-Key": f"k{i}"})
    assert keyed.failures == []
    assert ups[2].hits["POST"] >= 20  # keyed POSTs did reach it, and were retried elsewhere


def test_route_timeout_and_body_limit(out_dir: Path, admin_port: int, instances: Instances,
                                      start_envoy: StartEnvoy) -> None:
    open_port, strict_port = free_port(), free_port()
    config = make_config(out_dir, admin_port, [
        {"name": "open", "listen_port": open_port},
        {"name": "strict", "listen_port": strict_port, "retries": {"enabled": False},
         "timeouts": {"request_seconds": 0.5, "max_request_bytes": 1024}},
    ])
    slow = instances.http("slow", delay=1.2)
    fast = instances.http("fast")
    sink = EnvoyFileSink(config)
    sink.publish(make_snapshot(config, {"open": [endpoint(fast)], "strict": [endpoint(slow)]}))
    envoy = start_envoy(config)
    envoy.wait_for_hosts({"open": [fast.address], "strict": [slow.address]})
    started = time.monotonic()
    timed_out = send_requests(strict_port, 1, concurrency=1)
    assert timed_out.statuses == {504: 1} and time.monotonic() - started < 1.1
    too_big = send_requests(strict_port, 1, concurrency=1, method="POST", body=b"x" * 4096)
    assert too_big.statuses == {413: 1}
    # No limit by default: a 3 MiB body (above Envoy's 1 MiB retry buffer) goes through, even on a retriable PUT.
    big = send_requests(open_port, 2, concurrency=1, method="PUT", body=b"x" * (3 << 20))
    assert big.failures == [] and big.answered == {"fast": 2}
    routes = str(envoy.config_dump("dynamic_listeners"))
    assert "'timeout': '0s'" in routes and "'timeout': '0.500s'" in routes


def test_unsynced_and_portless_services(out_dir: Path, admin_port: int, instances: Instances,
                                        start_envoy: StartEnvoy) -> None:
    pending_port, front_port = free_port(), free_port()
    config = make_config(out_dir, admin_port, [{"name": "pending", "listen_port": pending_port}, {"name": "hidden"}],
                         [{"name": "front", "listen_port": front_port,
                           "backends": [{"service": "hidden", "weight": 1}]}])
    up = instances.http("h0")
    EnvoyFileSink(config).publish(make_snapshot(config, {"hidden": [endpoint(up)]}, unsynced=["pending"]))
    envoy = start_envoy(config)
    envoy.wait_for_hosts({"pending": [], "hidden": [up.address]})
    assert envoy.listeners() == {"pending", "front"}
    assert send_requests(pending_port, 3, concurrency=1).statuses == {503: 3}
    assert send_requests(front_port, 10, concurrency=2).answered == {"h0": 10}


def test_hot_reload_adds_and_removes_services_without_errors(out_dir: Path, admin_port: int, instances: Instances,
                                                              start_envoy: StartEnvoy) -> None:
    a_port, b_port, split_port = free_port(), free_port(), free_port()
    first = make_config(out_dir, admin_port, [{"name": "a", "listen_port": a_port}])
    a_ups = [instances.http("a0"), instances.http("a1")]
    b_up = instances.http("b0")
    eps = {"a": [endpoint(u) for u in a_ups], "b": [endpoint(b_up)]}
    sink = EnvoyFileSink(first)
    sink.publish(make_snapshot(first, eps))
    envoy = start_envoy(first)
    envoy.wait_for_hosts({"a": [u.address for u in a_ups]})
    with SteadyLoad(a_port, concurrency=3, max_seconds=20) as load:
        second = make_config(out_dir, admin_port, [{"name": "a", "listen_port": a_port},
                                                   {"name": "b", "listen_port": b_port}],
                             [{"name": "ab", "listen_port": split_port,
                               "backends": [{"service": "a", "weight": 1}, {"service": "b", "weight": 1}]}])
        sink.update_config(second)
        sink.publish(make_snapshot(second, eps, version=2))
        envoy.wait_for_listeners(["a", "b", "ab"])
        assert send_requests(b_port, 10).answered == {"b0": 10}
        assert set(send_requests(split_port, 60, concurrency=4).answered) == {"a0", "a1", "b0"}
        sink.update_config(first)  # and back: b and the split go away
        sink.publish(make_snapshot(first, eps, version=3))
        assert wait_until(lambda: envoy.listeners() == {"a"} and set(envoy.hosts()) == {"a"}, timeout=5)
        time.sleep(0.3)
    assert load.result.failures == [] and load.result.attempts > 50
    assert not (out_dir / "eds" / "b.json").exists()
    assert set(envoy.rejected_updates().values()) == {0}
