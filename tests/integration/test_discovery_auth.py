"""The discovery client against the emulator: the three auth modes, 401 re-auth, token refresh."""

from __future__ import annotations

import time

import pytest
from modelarts_emulator import Emulator

from agent.errors import AuthError
from agent.modelarts.auth import IamTokenAuth
from agent.modelarts.budget import BudgetRegistry
from agent.modelarts.client import ModelArtsClient, allowed_networks, build_client
from tests.integration.conftest import agent_config, emulator_config

pytestmark = pytest.mark.usefixtures("creds_env")


def fast_budgets() -> BudgetRegistry:
    return BudgetRegistry(600, 2000, 0.0, warm_start=False)


def lookup(client: ModelArtsClient, config) -> list[str]:  # type: ignore[no-untyped-def]
    parsed = client.get_endpoints("svc-llm", allowed_networks(config), 100)
    return [e.address for e in parsed.endpoints]


def expected(emu: Emulator) -> list[str]:
    return sorted(f"{i.ip}:{i.port}" for i in emu.admin.instances("svc-llm") if i.listed)


@pytest.mark.parametrize("mode", ["password", "aksk"])
def test_lookup_returns_the_emulator_instances(emulator: Emulator, mode: str) -> None:
    config = agent_config(emulator, mode)
    client = build_client(config, fast_budgets())
    assert lookup(client, config) == expected(emulator)
    assert len(expected(emulator)) == 3
    calls = [c for c in emulator.admin.calls() if c.api == "modelarts"]
    assert calls[-1].status == 200 and calls[-1].auth == ("token" if mode == "password" else "aksk")


def test_wrong_secret_key_is_refused(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELARTS_SK", "not-the-right-secret-key")
    config = agent_config(emulator, "aksk")
    client = build_client(config, fast_budgets())
    with pytest.raises(AuthError) as info:
        lookup(client, config)
    assert "not-the-right-secret-key" not in str(info.value)
    assert emulator.admin.calls()[-1].status == 401


def test_401_triggers_exactly_one_reauthentication(emulator: Emulator) -> None:
    config = agent_config(emulator, "password")
    client = build_client(config, fast_budgets())
    auth = client.auth
    assert isinstance(auth, IamTokenAuth)
    lookup(client, config)
    assert auth.issued_total == 1
    emulator.admin.revoke_tokens()
    assert lookup(client, config) == expected(emulator)
    assert auth.issued_total == 2
    statuses = [c.status for c in emulator.admin.calls() if c.api == "modelarts"]
    assert statuses[-2:] == [401, 200]


def test_401_with_bad_password_does_not_loop(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELARTS_PASSWORD", "wrong-password-123")
    config = agent_config(emulator, "password")
    client = build_client(config, fast_budgets())
    with pytest.raises(AuthError) as info:
        lookup(client, config)
    assert "wrong-password-123" not in str(info.value)
    assert len([c for c in emulator.admin.calls() if c.api == "iam"]) == 1


def test_token_is_refreshed_before_it_expires() -> None:
    with Emulator(emulator_config(token_ttl_seconds=3)) as emu:
        config = agent_config(emu, "password")
        client = build_client(config, fast_budgets())
        auth = client.auth
        assert isinstance(auth, IamTokenAuth)
        lookup(client, config)
        time.sleep(3.2)
        lookup(client, config)
        assert auth.issued_total == 2
        # Refreshed proactively: ModelArts never saw an expired token.
        assert all(c.status == 200 for c in emu.admin.calls() if c.api == "modelarts")


def test_static_token_mode(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    issuer = build_client(agent_config(emulator, "password"), fast_budgets()).auth
    assert isinstance(issuer, IamTokenAuth)
    token = issuer.headers_for("GET", "x", None)["X-Auth-Token"]
    monkeypatch.setenv("MODELARTS_TOKEN", token)
    config = agent_config(emulator, "token")
    client = build_client(config, fast_budgets())
    assert lookup(client, config) == expected(emulator)
    emulator.admin.revoke_tokens()
    with pytest.raises(AuthError):
        lookup(client, config)


def test_missing_credentials_give_a_clear_error(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELARTS_SK")
    config = agent_config(emulator, "aksk")
    client = build_client(config, fast_budgets())
    with pytest.raises(AuthError, match="MODELARTS_SK"):
        lookup(client, config)
