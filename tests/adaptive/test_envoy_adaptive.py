"""A real Envoy 1.40 fed by the file sink and the agent's own feedback loop (loopback only).

The weights the loop publishes must show up in Envoy's /clusters as `weight`, and a slow upstream must
then get clearly fewer requests than the fast ones.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.adaptive.envoy_admin import AdminReader
from agent.adaptive.runner import AdaptiveRunner
from agent.sinks.envoy.files import EnvoyFileSink
from tests.envoy.conftest import Instances, StartEnvoy
from tests.envoy.harness import SteadyLoad, endpoint, free_port, make_config, make_snapshot, send_requests, wait_until

pytestmark = pytest.mark.envoy


def envoy_weights(envoy: object, cluster: str) -> dict[str, int]:
    data = envoy.admin_json("/clusters?format=json")  # type: ignore[attr-defined]
    for entry in data.get("cluster_statuses", []):
        if entry["name"] == cluster:
            return {f"{h['address']['socket_address']['address']}:{h['address']['socket_address']['port_value']}":
                    int(h.get("weight", 1)) for h in entry.get("host_statuses", [])}
    return {}


def test_slow_upstream_gets_a_low_weight_and_few_requests(out_dir: Path, admin_port: int, instances: Instances,
                                                          start_envoy: StartEnvoy) -> None:
    port = free_port()
    while port == admin_port:  # two picks of a free port can coincide; Envoy would then fail this listener
        port = free_port()
    config = make_config(out_dir, admin_port, [{"name": "llm", "listen_port": port,
                                                "lb": {"policy": "least_request", "adaptive": True}}])
    fast = [instances.http(f"fast{n}", delay=0.002) for n in range(3)]
    slow = instances.http("slow", delay=0.060)
    sink = EnvoyFileSink(config)
    sink.publish(make_snapshot(config, {"llm": [endpoint(u) for u in [*fast, slow]]}))
    envoy = start_envoy(config)
    envoy.wait_for_hosts({"llm": [u.address for u in [*fast, slow]]})
    runner = AdaptiveRunner(lambda: [sink])
    try:
        runner.apply(config)
        with SteadyLoad(port, concurrency=2, max_seconds=45):
            # Weights reach Envoy through the EDS file: the slow host ends up far (4x+) below the others.
            reached = wait_until(lambda: (w := envoy_weights(envoy, "llm")) and w.get(slow.address, 1000) <= 250
                                 and all(w.get(u.address) == 1000 for u in fast), timeout=40, interval=0.25)
        assert reached, f"weights in Envoy: {envoy_weights(envoy, 'llm')}; table: {runner.table.weights()}"
        assert envoy.rejected_updates().get("cluster_manager.cds.update_rejected") == 0
        for u in [*fast, slow]:
            u.hits.clear()
        result = send_requests(port, 600, concurrency=2)
        assert result.failures == []
        assert slow.total * 5 < min(u.total for u in fast), {u.instance_id: u.total for u in [*fast, slow]}
        # And /status rows carry what the loop saw.
        rows = {r["address"]: r for r in runner.rows("llm")}
        assert rows[slow.address]["latency_ms"] > rows[fast[0].address]["latency_ms"]
    finally:
        runner.stop()


def test_envoy_counts_each_hosts_answers_and_their_time_to_first_byte(out_dir: Path, admin_port: int,
                                                                       instances: Instances,
                                                                       start_envoy: StartEnvoy) -> None:
    """The timing access logger on an adaptive listener: per host, 2xx answers with a body and the sum of
    their times to first byte, read by the loop's AdminReader next to /clusters (issue 17: exact
    per-request evidence instead of sampled in-flight counts)."""
    port = free_port()
    while port == admin_port:
        port = free_port()
    config = make_config(out_dir, admin_port, [{"name": "llm", "listen_port": port,
                                                "lb": {"policy": "least_request", "adaptive": True}}])
    fast, slow = instances.http("fast", delay=0.002), instances.http("slow", delay=0.040)
    sink = EnvoyFileSink(config)
    sink.publish(make_snapshot(config, {"llm": [endpoint(u) for u in (fast, slow)]}))
    envoy = start_envoy(config)
    envoy.wait_for_hosts({"llm": [u.address for u in (fast, slow)]})
    assert send_requests(port, 80, concurrency=2).failures == []
    reader = AdminReader([f"http://127.0.0.1:{admin_port}"])
    try:
        hosts = next(iter(reader.read(["llm"]).values()))["llm"]
    finally:
        reader.close()
    means = {}
    for upstream, delay in ((fast, 0.002), (slow, 0.040)):
        counters = hosts[upstream.address]
        assert counters.timed == counters.rq_success == upstream.total > 0, counters
        assert counters.timed_us is not None
        means[upstream] = counters.timed_us / counters.timed / 1e6
        assert means[upstream] >= delay, (upstream.address, means)  # queueing at the instance included
    assert means[slow] > 1.5 * means[fast], means  # (the test instances share one thread: the fast one waits too)
