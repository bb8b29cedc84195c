"""Hostile conditions around discovery: clock skew, IAM outages, TLS, broken configs."""

from __future__ import annotations

import contextlib
import logging
import re
import time
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from modelarts_emulator import Emulator

from agent.config import parse_config
from agent.errors import AuthError, ConfigError, DiscoveryError
from agent.modelarts.budget import BudgetRegistry
from agent.modelarts.client import allowed_networks, build_client
from agent.snapshot import SnapshotStore
from agent.sources.modelarts import ModelArtsSource
from tests.integration.conftest import agent_config, emulator_config

pytestmark = pytest.mark.usefixtures("creds_env")


def budgets() -> BudgetRegistry:
    return BudgetRegistry(600, 2000, 0.0, warm_start=False)


def test_aksk_clock_skew_is_corrected_from_the_gateway_date(emulator: Emulator,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    config = agent_config(emulator, "aksk")
    client = build_client(config, budgets())
    emulator.admin.set_clock_skew(3600)  # the gateway is an hour ahead of this host
    with caplog.at_level(logging.WARNING):
        parsed = client.get_endpoints("svc-llm", allowed_networks(config), 100)
    assert len(parsed.endpoints) == 3
    assert re.search(r"differs from the API gateway's by 3(599|600|601) s", caplog.text), caplog.text
    statuses = [c.status for c in emulator.admin.calls() if c.api == "modelarts"]
    assert statuses[-2:] == [401, 200]
    # Later calls are signed with the corrected time straight away.
    client.get_endpoints("svc-llm", allowed_networks(config), 100)
    assert [c.status for c in emulator.admin.calls() if c.api == "modelarts"][-1] == 200


def test_skew_within_tolerance_is_not_touched(emulator: Emulator) -> None:
    config = agent_config(emulator, "aksk")
    client = build_client(config, budgets())
    emulator.admin.set_clock_skew(20)
    client.get_endpoints("svc-llm", allowed_networks(config), 100)
    assert all(c.status == 200 for c in emulator.admin.calls() if c.api == "modelarts")


def test_iam_down_while_the_token_expires_keeps_last_known_good() -> None:
    with Emulator(emulator_config(token_ttl_seconds=2)) as emu:
        config = agent_config(emu, "password")
        client = build_client(config, budgets())
        store = SnapshotStore(config.services, config.discovery)
        source = ModelArtsSource(config, store, client)
        spec = config.services[0]
        source.poll(spec)
        good = store.snapshot.services["llm"].endpoints
        emu.admin.iam_down(True)
        time.sleep(2.2)  # the token has expired and IAM cannot issue a new one
        delays = [source.poll(spec) for _ in range(3)]
        status = store.status("llm")
        assert status is not None and status.last_error_kind == "iam_error" and status.consecutive_failures == 3
        assert store.snapshot.services["llm"].endpoints == good
        assert delays[2] > delays[0], "no backoff while IAM is down"
        emu.admin.iam_down(False)
        source.poll(spec)
        assert store.status("llm").consecutive_failures == 0  # type: ignore[union-attr]


def test_tls_is_verified_by_default_and_a_custom_ca_works() -> None:
    with Emulator(emulator_config(api_tls=True)) as emu:
        assert emu.modelarts_url.startswith("https://")
        without_ca = agent_config(emu, "password")
        with pytest.raises(DiscoveryError) as info:
            build_client(without_ca, budgets()).get_endpoints("svc-llm", allowed_networks(without_ca), 100)
        assert info.value.kind in ("iam_unreachable", "connection")
        with_ca = agent_config(emu, "password", modelarts={"ca_file": emu.ca_pem_path})
        parsed = build_client(with_ca, budgets()).get_endpoints("svc-llm", allowed_networks(with_ca), 100)
        assert len(parsed.endpoints) == 3


def test_insecure_mode_needs_the_flag_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    with Emulator(emulator_config(api_tls=True)) as emu:
        config = agent_config(emu, "password", modelarts={"verify_tls": False})
        with caplog.at_level(logging.WARNING):
            client = build_client(config, budgets())
        assert "TLS verification for IAM and ModelArts is OFF" in caplog.text
        assert len(client.get_endpoints("svc-llm", allowed_networks(config), 100).endpoints) == 3


def test_wrong_project_is_a_clear_auth_error(emulator: Emulator) -> None:
    config = agent_config(emulator, "password", modelarts={"project_id": "another-project"})
    with pytest.raises((AuthError, DiscoveryError)) as info:
        build_client(config, budgets()).get_endpoints("svc-llm", allowed_networks(config), 100)
    assert "HTTP 40" in str(info.value) or "IAM refused" in str(info.value)


# -- the config loader never crashes, whatever it is fed ------------------------------------------

SCALARS = st.none() | st.booleans() | st.integers(-10, 70000) | st.floats(allow_nan=False) | st.text(max_size=12)
VALUES: Any = st.recursive(SCALARS, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c,
                                                                                         max_size=3), max_leaves=8)
KEYS = st.sampled_from(["modelarts", "auth", "budget", "discovery", "services", "splits", "envoy", "admin", "x"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(KEYS, VALUES | st.dictionaries(st.text(max_size=10), VALUES, max_size=5), max_size=6))
def test_config_fuzz_only_ever_raises_config_error(data: dict[str, Any]) -> None:
    base = {"modelarts": {"iam_url": "http://a", "modelarts_url": "http://a", "project_id": "p"},
            "auth": {"mode": "token"}}
    for candidate in (data, {**base, **data}):
        try:
            parse_config(candidate)
        except ConfigError as exc:
            assert str(exc).startswith("invalid configuration")


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_yaml_fuzz(text: str) -> None:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return
    with contextlib.suppress(ConfigError):
        parse_config(data)
