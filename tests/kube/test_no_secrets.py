"""No secret anywhere a person or a scraper can look: the controller's log, /metrics, /status,
Kubernetes Events and the CR status, across password and AK/SK credentials, a wrong password and a
token expiry (so error paths and re-authentication are exercised too)."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest

from agent.emulator.config import DEFAULT_AK, DEFAULT_DOMAIN, DEFAULT_PASSWORD, DEFAULT_SK
from tests.kube.conftest import Agents, Cluster, mas, password_secret, vpc_addresses, wait_until

pytestmark = pytest.mark.kube

TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_\-]{200,}")  # IAM tokens are ~2 KB opaque strings


def aksk_secret(namespace: str, name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
            "stringData": {"domain": DEFAULT_DOMAIN, "ak": DEFAULT_AK, "sk": DEFAULT_SK}}


def test_no_secret_in_logs_metrics_status_events_or_cr_status(cluster: Cluster, namespace: str, agents: Agents,
                                                               emulators) -> None:  # type: ignore[no-untyped-def]
    emu = emulators([
        {"name": "pw", "service_id": "svc-pw", "instances": 2, "port": 8080, "bind_addresses": vpc_addresses(61, 2)},
        {"name": "ak", "service_id": "svc-ak", "instances": 2, "port": 8080, "bind_addresses": vpc_addresses(63, 2)},
    ])
    controller = agents.controller("secrets", namespace)
    # A previous test's leader may still hold the Lease for up to its duration.
    wait_until(controller.is_leader, 60, f"the controller to lead; log: {controller.log()[-1500:]}")
    cluster.apply(password_secret(namespace, "wrong", password="wrong-password-1234"),
                  mas(namespace, "bad", emu, "svc-pw", "wrong"))
    cluster.apply(password_secret(namespace, "pw-creds"), mas(namespace, "pw", emu, "svc-pw", "pw-creds"),
                  aksk_secret(namespace, "ak-creds"), mas(namespace, "ak", emu, "svc-ak", "ak-creds"))
    for name in ("pw", "ak"):
        wait_until(lambda n=name: cluster.condition(namespace, n, "Synced").get("status") == "True", 60,
                   f"{name} synced: {cluster.condition(namespace, name, 'Synced')}")
    wait_until(lambda: cluster.condition(namespace, "bad", "Synced").get("reason") == "AuthFailed", 60,
               "bad: AuthFailed")
    emu.admin.revoke_tokens()  # a 401 and a re-authentication on the password path
    time.sleep(3)
    texts = {
        "controller log": controller.log(),
        "controller /metrics": controller.admin("/metrics").text,
        "controller /status": json.dumps(controller.status()),
        "events": json.dumps(cluster.get_json("events", "-n", namespace)),
        "ModelArtsServices": json.dumps(cluster.get_json("modelartsservices", "-n", namespace)),
    }
    assert "obtained IAM token" in texts["controller log"], "the password path never authenticated"
    for where, text in texts.items():
        for secret in (DEFAULT_PASSWORD, "wrong-password-1234", DEFAULT_SK):
            assert secret not in text, f"{where} contains a secret"
        assert not TOKEN_SHAPE.search(text), f"{where} contains something shaped like an IAM token"
