"""No secret anywhere a person or a scraper can look: the controller's log, /metrics, /status,
Kubernetes Events and the CR status, across password and AK/SK credentials, a wrong password and a
token expiry (so error paths and re-authentication are exercised too)."""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from modelarts_emulator.config import DEFAULT_AK, DEFAULT_DOMAIN, DEFAULT_PASSWORD, DEFAULT_SK

from tests.kube.conftest import Agents, Cluster, mas, password_secret, vpc_addresses, wait_until

pytestmark = pytest.mark.kube

TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_\-]{200,}")  # IAM tokens are ~2 KB opaque strings


def aksk_secret(namespace: str, name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
            "stringData": {"domain": DEFAULT_DOMAIN, "ak": DEFAULT_AK, "sk": DEFAULT_SK}}


def token_grants(emu: Any) -> int:
    """IAM tokens the emulator issued (POST /v3/auth/tokens answered 201)."""
    return sum(1 for c in emu.admin.calls(api="iam") if c.method == "POST" and c.status == 201)


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
    # A 401 and a re-authentication on the password path, both counted by the emulator: without them the
    # checks below would say nothing about what the controller prints while it re-authenticates.
    before = token_grants(emu)
    assert before >= 1, "the password path never authenticated"
    revoked_at = max((c.seq for c in emu.admin.calls()), default=0)
    emu.admin.revoke_tokens()
    wait_until(lambda: token_grants(emu) > before, 30, "a re-authentication after the token revocation")
    assert any(c.status == 401 for c in emu.admin.calls(after=revoked_at, api="modelarts")), \
        "ModelArts never refused the revoked token"
    time.sleep(1)
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


class _Recorder(BaseHTTPRequestHandler):
    requests: list[str] = []

    def _record(self) -> None:
        _Recorder.requests.append(f"{self.command} {self.path}")
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _record

    def log_message(self, *_args: object) -> None:
        pass


def test_a_cr_naming_a_host_outside_the_allow_list_gets_no_credential(
        cluster: Cluster, namespace: str, agents: Agents, emulators) -> None:  # type: ignore[no-untyped-def]
    """The confused deputy: a CR points modelartsUrl/iamUrl at a listener the controller is not allowed to
    call (127.0.0.2; the tests allow only the emulators' 127.0.0.1). It gets Ready=False/EndpointNotAllowed
    and a Warning Event, and the listener receives nothing, while a CR with an allowed host syncs."""
    _Recorder.requests = []
    server = ThreadingHTTPServer(("127.0.0.2", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    evil = f"http://127.0.0.2:{server.server_address[1]}"
    try:
        emu = emulators([{"name": "ok", "service_id": "svc-ok", "instances": 1, "port": 8080,
                          "bind_addresses": vpc_addresses(65, 1)}])
        controller = agents.controller("allowlist", namespace)
        wait_until(controller.is_leader, 60, f"the controller to lead; log: {controller.log()[-1500:]}")
        cluster.apply(password_secret(namespace, "creds"), mas(namespace, "ok", emu, "svc-ok", "creds"),
                      mas(namespace, "evil", emu, "svc-ok", "creds", modelartsUrl=evil, iamUrl=evil))
        wait_until(lambda: cluster.condition(namespace, "ok", "Synced").get("status") == "True", 60,
                   f"ok synced: {cluster.condition(namespace, 'ok', 'Synced')}")
        ready = wait_until(lambda: (lambda c: c if c.get("reason") == "EndpointNotAllowed" else None)(
            cluster.condition(namespace, "evil", "Ready")), 30, "evil: Ready=False, EndpointNotAllowed")
        assert ready["status"] == "False" and "127.0.0.2" in ready["message"]
        wait_until(lambda: any(e.get("reason") == "EndpointNotAllowed"
                               and (e.get("involvedObject") or {}).get("name") == "evil"
                               for e in cluster.get_json("events", "-n", namespace)["items"]), 30,
                   "a Warning Event EndpointNotAllowed on evil")
        time.sleep(3)  # several poll intervals of the allowed CR: the evil one is never polled
        assert _Recorder.requests == []
        assert DEFAULT_PASSWORD not in controller.log()
    finally:
        server.shutdown()
        server.server_close()
