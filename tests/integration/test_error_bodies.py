"""Every answer body is capped and deadlined, whatever its status: huge and slowloris 4xx/5xx, IAM too."""

from __future__ import annotations

import email.utils
import time
from typing import Any

import pytest
from modelarts_emulator import Emulator

from agent.errors import DiscoveryError, ThrottledError
from agent.modelarts.budget import BudgetRegistry
from agent.modelarts.client import ModelArtsClient, allowed_networks, build_client
from tests.integration.conftest import agent_config

pytestmark = pytest.mark.usefixtures("creds_env")
TIMEOUT = 2.0  # agent_config's modelarts.timeout_seconds


def client_for(emu: Emulator) -> tuple[ModelArtsClient, Any]:
    config = agent_config(emu, "password")
    return build_client(config, BudgetRegistry(600, 2000, 0.0, warm_start=False)), config


def timed_lookup(client: ModelArtsClient, config: Any) -> tuple[DiscoveryError, float]:
    started = time.monotonic()
    with pytest.raises(DiscoveryError) as info:
        client.get_endpoints("svc-llm", allowed_networks(config), 100)
    return info.value, time.monotonic() - started


@pytest.mark.parametrize(("status", "kind"), [(500, "server_error"), (503, "server_error"), (404, "not_found"),
                                              (403, "auth"), (429, "throttled"), (418, "http_error")])
def test_slowloris_error_body_hits_the_deadline(emulator: Emulator, status: int, kind: str) -> None:
    client, config = client_for(emulator)
    client.get_endpoints("svc-llm", allowed_networks(config), 100)  # token in hand
    emulator.admin.inject_fault("custom", service_id="svc-llm", count=1, status=status, body="error",
                                interval_seconds=0.5)  # ~60 bytes at 2 a second: 30 s if read whole
    error, elapsed = timed_lookup(client, config)
    assert elapsed < TIMEOUT + 1.5, f"{elapsed:.1f}s: the error body was read without a deadline"
    assert error.kind == kind and error.status == status  # the status still decides what it means
    if status == 429:
        assert isinstance(error, ThrottledError)


@pytest.mark.parametrize("chunked", [False, True])
def test_huge_error_body_is_not_read_whole(emulator: Emulator, chunked: bool) -> None:
    client, config = client_for(emulator)
    emulator.admin.inject_fault("custom", service_id="svc-llm", count=1, status=503, body="error", size_mb=48,
                                chunked=chunked)
    error, elapsed = timed_lookup(client, config)
    assert error.kind == "server_error" and error.status == 503
    assert len(str(error)) < 300 and elapsed < TIMEOUT + 1.5
    assert len(client.get_endpoints("svc-llm", allowed_networks(config), 100).endpoints) == 3


@pytest.mark.parametrize("params", [
    {"kind": "custom", "status": 503, "body": "error", "interval_seconds": 0.5},
    {"kind": "custom", "status": 201, "interval_seconds": 0.2, "chunk_bytes": 16},  # a real token, dribbled
    {"kind": "custom", "status": 500, "body": "text", "text": "x", "size_mb": 48, "chunked": True},
    {"kind": "slowloris", "interval_seconds": 0.5},
])
def test_iam_answers_are_capped_and_deadlined(emulator: Emulator, params: dict[str, Any]) -> None:
    client, config = client_for(emulator)
    kind = params.pop("kind")
    emulator.admin.inject_fault(kind, applies_to="iam", count=1, **params)
    error, elapsed = timed_lookup(client, config)
    assert error.kind == "iam_error" and elapsed < TIMEOUT + 1.5, (error, elapsed)
    assert not [c for c in emulator.admin.calls(api="modelarts")], "no token, no ModelArts call"


def test_iam_token_without_header_or_with_a_bad_expiry(emulator: Emulator) -> None:
    client, config = client_for(emulator)
    emulator.admin.inject_fault("custom", applies_to="iam", count=1, omit_headers=["X-Subject-Token"])
    error, _ = timed_lookup(client, config)
    assert error.kind == "iam_error" and "X-Subject-Token" in str(error)
    # An expiry in the past would otherwise mean a token request before every single look-up.
    emulator.admin.inject_fault("custom", applies_to="iam", count=1, expires_at="1970-01-01T00:00:00Z")
    for _ in range(3):
        assert len(client.get_endpoints("svc-llm", allowed_networks(config), 100).endpoints) == 3
    # One request without the header, one token with the past expiry, used for all three look-ups.
    assert len(emulator.admin.calls(api="iam")) == 2
    assert [c.status for c in emulator.admin.calls(api="modelarts")] == [200, 200, 200]


@pytest.mark.parametrize("date", ["+7200", "not a date", ""])
def test_a_lying_or_missing_date_on_a_401_heals(emulator: Emulator, date: str) -> None:
    """AK/SK signing learns the gateway's clock from a 401's Date; a lie costs one failed look-up at most."""
    config = agent_config(emulator, "aksk")
    client = build_client(config, BudgetRegistry(600, 2000, 0.0, warm_start=False))
    networks = allowed_networks(config)
    assert len(client.get_endpoints("svc-llm", networks, 100).endpoints) == 3
    headers = {"Date": email.utils.formatdate(time.time() + 7200, usegmt=True)} if date == "+7200" else (
        {"Date": date} if date else {})
    emulator.admin.inject_fault("custom", service_id="svc-llm", count=1, status=401, body="error",
                                error_code="APIGW.0301", headers=headers, omit_headers=[] if headers else ["Date"])
    with pytest.raises(DiscoveryError) as info:
        client.get_endpoints("svc-llm", networks, 100)
    assert info.value.kind == "auth"
    results = []
    for _ in range(3):
        try:
            results.append(len(client.get_endpoints("svc-llm", networks, 100).endpoints))
        except DiscoveryError as exc:
            results.append(exc.kind)  # type: ignore[arg-type]
    assert results[-2:] == [3, 3], results
