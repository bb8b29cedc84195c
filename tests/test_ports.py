"""The suite's port picker never hands out a port twice (a repeat made two listeners of one test collide)."""

from __future__ import annotations

from tests.envoy.harness import free_port as harness_free_port
from tests.kubeenv import free_port as kubeenv_free_port
from tests.ports import free_port


def test_no_port_is_handed_out_twice_in_one_process() -> None:
    # 3,000 picks from ~28,000 ephemeral ports: without the record, the birthday bound makes a repeat all
    # but certain (about 160 expected).
    ports = [free_port() for _ in range(1000)] + [harness_free_port() for _ in range(1000)] + \
            [kubeenv_free_port(udp_too=True) for _ in range(1000)]
    assert len(set(ports)) == len(ports)
