"""Long-running processes keep bounded memory for redaction and Event de-duplication."""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from agent import logs
from agent.config import AuthMode
from agent.kube.client import EventRecorder
from agent.logs import redact, secret_count
from agent.modelarts.auth import IamTokenAuth
from agent.modelarts.credentials import Credentials, SecretSource
from tests.unit.fakes import make_response


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(logs, "_SECRETS", OrderedDict())
    monkeypatch.setattr(logs, "_SLOTS", OrderedDict())
    yield


class TokenIssuer:
    """An IAM stand-in that hands out a new token on every request."""

    def __init__(self) -> None:
        self.issued = 0

    def post(self, url: str, json: Any = None, timeout: float = 10, stream: bool = False) -> requests.Response:
        self.issued += 1
        return make_response(201, {"token": {"expires_at": "2099-01-01T00:00:00Z"}},
                             {"X-Subject-Token": f"MIIsecret-token-{self.issued:06d}"})


def test_token_refreshes_do_not_grow_the_redaction_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_IAM_PASSWORD", "a-password-value")
    creds = Credentials(mode=AuthMode.password, domain="dom", user="usr",
                        password=SecretSource("IAM password", None, "TEST_IAM_PASSWORD"))
    issuer = TokenIssuer()
    auth = IamTokenAuth("http://127.0.0.1:1", creds, "project", issuer, 2.0, 0.0)  # type: ignore[arg-type]
    for _ in range(300):
        token = auth.headers_for("GET", "http://127.0.0.1:1/x", None)["X-Auth-Token"]
        auth.on_unauthorized(make_response(401))
    assert issuer.issued == 300  # the refreshes really happened
    assert secret_count() == 1 + logs._SLOT_KEEP  # the password, the current token and the one before
    assert redact(token) == "***"


def test_tokens_from_the_host_wide_cache_do_not_grow_the_redaction_set(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.modelarts.host_state import TokenCache

    monkeypatch.setenv("TEST_IAM_PASSWORD", "a-password-value")
    creds = Credentials(mode=AuthMode.password, domain="dom", user="usr",
                        password=SecretSource("IAM password", None, "TEST_IAM_PASSWORD"))
    cache = TokenCache(tmp_path / "tokens")
    auth = IamTokenAuth("http://127.0.0.1:1", creds, "project", TokenIssuer(), 2.0, 0.0,  # type: ignore[arg-type]
                        cache=cache)
    for i in range(300):
        auth.on_unauthorized(make_response(401))
        cache.put(auth._cache_key, f"MIIcached-token-{i:06d}", 4e9)  # another process's refresh
        assert auth.headers_for("GET", "http://127.0.0.1:1/x", None)["X-Auth-Token"] == f"MIIcached-token-{i:06d}"
    assert secret_count() == logs._SLOT_KEEP
    assert redact("MIIcached-token-000299") == "***"


def test_a_rotated_secret_file_replaces_its_old_values(tmp_path: Path) -> None:
    path = tmp_path / "password"
    source = SecretSource("IAM password", path, None)
    for i in range(100):
        path.write_text(f"password-number-{i:03d}")
        os.utime(path, ns=(i * 10**9, i * 10**9))  # a distinct mtime per rotation
        assert source.get() == f"password-number-{i:03d}"
    assert secret_count() == logs._SLOT_KEEP
    assert redact("password-number-099 password-number-098") == "*** ***"


class RecordingKube:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def request(self, method: str, path: str, **_kwargs: Any) -> dict[str, Any]:
        self.calls.append((method, path))
        return {}


CR = {"apiVersion": "vpc.modelarts.io/v1", "kind": "ModelArtsService",
      "metadata": {"name": "llm", "namespace": "default", "uid": "u-1"}}


def test_event_dedupe_memory_is_bounded() -> None:
    kube = RecordingKube()
    recorder = EventRecorder(kube, "test", "me")  # type: ignore[arg-type]
    for i in range(EventRecorder.MAX_SEEN * 3):
        recorder.emit(CR, "Warning", "SyncFailed", f"distinct message {i}")
    assert len(recorder._seen) == EventRecorder.MAX_SEEN
    # A repeat of a recent event still bumps the existing Event.
    recorder.emit(CR, "Warning", "SyncFailed", f"distinct message {EventRecorder.MAX_SEEN * 3 - 1}")
    assert kube.calls[-1][0] == "PATCH"


def test_expired_events_are_forgotten() -> None:
    kube = RecordingKube()
    recorder = EventRecorder(kube, "test", "me", dedupe_seconds=0.0)  # type: ignore[arg-type]
    for i in range(50):
        recorder.emit(CR, "Normal", "Synced", f"message {i}")
    assert len(recorder._seen) <= 1
    assert all(method == "POST" for method, _ in kube.calls)
