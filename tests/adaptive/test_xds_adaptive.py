"""Adaptive weights over ADS: real Envoys (one state-of-the-world, one delta) fed by the in-process xDS sink.

A weight update must reach both Envoys as new EDS only (CDS and LDS are not re-sent), and the agent's
feedback loop, reading both Envoys' admin, must push a slow upstream's weight down over ADS so that it
gets clearly fewer requests. Loopback only.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.adaptive.runner import AdaptiveRunner
from agent.config import AgentConfig
from tests.adaptive.test_envoy_adaptive import envoy_weights
from tests.envoy.conftest import Instances
from tests.envoy.harness import EnvoyProcess, SteadyLoad, endpoint, free_port, make_snapshot, send_requests, wait_until
from tests.xds.conftest import StartAdsEnvoy, StartControlPlane, ads_address, start_ads_envoy, start_control_plane
from tests.xds.helpers import xds_config

__all__ = ["start_ads_envoy", "start_control_plane"]

pytestmark = pytest.mark.envoy

A, B = "127.0.2.1", "127.0.2.2"  # each Envoy's listen address (outside the instances' 127.0.0.x)


def xds_updates(envoy: EnvoyProcess) -> dict[str, int]:
    """How many CDS and LDS updates this Envoy has accepted."""
    stats = envoy.stats("(cluster_manager.cds|listener_manager.lds).update_success")
    return {name: value for name, value in stats.items() if name.endswith("update_success")}


def adaptive_config(tmp_path: Path, port: int, admin_urls: list[str] | None = None) -> AgentConfig:
    config = xds_config(tmp_path, [{"name": "llm", "listen_port": port,
                                    "lb": {"policy": "least_request", "adaptive": True}}])
    if admin_urls is not None:
        config = config.model_copy(update={"adaptive": config.adaptive.model_validate(
            {**config.adaptive.model_dump(), "envoy_admin_urls": admin_urls})})
    return config


def test_weight_update_reaches_sotw_and_delta_envoys_as_eds_only(
        tmp_path: Path, instances: Instances, start_control_plane: StartControlPlane,
        start_ads_envoy: StartAdsEnvoy) -> None:
    port = free_port()
    config = adaptive_config(tmp_path, port)
    ups = [instances.http(f"w{n}") for n in range(3)]
    sink = start_control_plane(config)
    sink.publish(make_snapshot(config, {"llm": [endpoint(u) for u in ups]}))
    envoys = [start_ads_envoy(ads_address(config), listen_address=A),
              start_ads_envoy(ads_address(config), listen_address=B, delta=True)]
    for envoy in envoys:
        envoy.wait_for_hosts({"llm": [u.address for u in ups]}, timeout=15)
    before = [xds_updates(envoy) for envoy in envoys]
    version = sink.cache.current.version if sink.cache.current else 0

    wanted = {ups[0].address: 1000, ups[1].address: 400, ups[2].address: 10}
    sink.update_weights({"llm": wanted})
    for envoy in envoys:
        assert wait_until(lambda e=envoy: envoy_weights(e, "llm") == wanted, 10), envoy_weights(envoy, "llm")
    assert sink.cache.current is not None and sink.cache.current.version == version + 1
    # The same weights again are no new version; CDS and LDS were never re-sent.
    sink.update_weights({"llm": dict(wanted)})
    assert sink.cache.current.version == version + 1
    assert [xds_updates(envoy) for envoy in envoys] == before
    assert not any(v for envoy in envoys for v in envoy.rejected_updates().values())

    # An endpoint change keeps the weights of the endpoints that stay; a new one gets the heaviest weight.
    extra = instances.http("w3")
    sink.publish(make_snapshot(config, {"llm": [endpoint(u) for u in [*ups[1:], extra]]}, version=2))
    expected = {ups[1].address: 400, ups[2].address: 10, extra.address: 400}
    for envoy in envoys:
        assert wait_until(lambda e=envoy: envoy_weights(e, "llm") == expected, 10), envoy_weights(envoy, "llm")


def test_feedback_loop_steers_ads_envoys_away_from_a_slow_upstream(
        tmp_path: Path, instances: Instances, start_control_plane: StartControlPlane,
        start_ads_envoy: StartAdsEnvoy) -> None:
    port = free_port()
    fast = [instances.http(f"fast{n}", delay=0.002) for n in range(3)]
    slow = instances.http("slow", delay=0.060)
    admin_ports = [free_port(), free_port()]
    config = adaptive_config(tmp_path, port, [f"http://127.0.0.1:{p}" for p in admin_ports])
    sink = start_control_plane(config)
    sink.publish(make_snapshot(config, {"llm": [endpoint(u) for u in [*fast, slow]]}))
    envoys = [start_ads_envoy(ads_address(config), listen_address=A, admin_port=admin_ports[0]),
              start_ads_envoy(ads_address(config), listen_address=B, admin_port=admin_ports[1], delta=True)]
    for envoy in envoys:
        envoy.wait_for_hosts({"llm": [u.address for u in [*fast, slow]]}, timeout=15)
    runner = AdaptiveRunner(lambda: [sink])
    try:
        runner.apply(config)

        def steered() -> bool:
            for envoy in envoys:
                weights = envoy_weights(envoy, "llm")
                if weights.get(slow.address, 1000) > 250 or any(weights.get(u.address) != 1000 for u in fast):
                    return False
            return True

        # Load through both Envoys: the loop sums their counters, as it would for a fleet of gateways.
        with SteadyLoad(port, concurrency=1, max_seconds=45, host=A), \
                SteadyLoad(port, concurrency=1, max_seconds=45, host=B):
            reached = wait_until(steered, timeout=40, interval=0.25)
        assert reached, (f"weights: {[envoy_weights(e, 'llm') for e in envoys]}; "
                         f"table: {runner.table.weights()}")
        for u in [*fast, slow]:
            u.hits.clear()
        for address in (A, B):
            result = send_requests(port, 300, concurrency=2, host=address)
            assert result.failures == [], address
        assert slow.total * 5 < min(u.total for u in fast), {u.instance_id: u.total for u in [*fast, slow]}
    finally:
        runner.stop()
