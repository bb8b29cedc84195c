"""`emulator --instance-address`: every instance on one address with its own port (an emulator in a
pod, which has one IP), as the real-cluster tests run it."""

from __future__ import annotations

import argparse

import pytest
import requests
from modelarts_emulator import Emulator
from modelarts_emulator.cli import build_config, configure_parser
from modelarts_emulator.config import ScenarioError


def options(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    return parser.parse_args(list(argv))


def test_instances_share_the_address_on_their_own_ports() -> None:
    config = build_config(options("--services", "2", "--instances", "3", "--instance-address", "127.0.0.1"))
    with Emulator(config) as emu:
        addresses = [i.address for i in emu.admin.instances()]
        assert len(addresses) == 6 and len(set(addresses)) == 6
        assert {a.rsplit(":", 1)[0] for a in addresses} == {"127.0.0.1"}
        for address in addresses:
            assert requests.get(f"http://{address}/", timeout=5).json()["address"] == address
        # Scale-out keeps to the one address.
        sid = config.services[0].service_id
        emu.admin.scale(sid, 4, wait=True)
        assert {i.address.rsplit(":", 1)[0] for i in emu.admin.instances(sid)} == {"127.0.0.1"}


def test_a_bad_instance_address_is_a_scenario_error() -> None:
    with pytest.raises(ScenarioError, match="not an IP address"):
        build_config(options("--instance-address", "pod-ip"))
