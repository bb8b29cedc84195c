"""Auth brought back on the listener (API keys, JWT) and the JSON access log, with the real Envoy."""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from modelarts_emulator import Emulator, EmulatorConfig
from modelarts_emulator.config import DEFAULT_DOMAIN, DEFAULT_PASSWORD, DEFAULT_PROJECT_ID, DEFAULT_USER

from agent.app.run import AgentRuntime
from agent.config import parse_config
from agent.model import Endpoint
from agent.sinks.envoy.files import EnvoyFileSink
from agent.sinks.factory import sinks_for
from tests.envoy.conftest import StartEnvoy
from tests.envoy.harness import free_port, make_config, make_snapshot, next_loopback_ip, wait_until

pytestmark = pytest.mark.envoy


class HeaderRecorder:
    """An upstream that remembers the headers of every request it served."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                recorder.seen.append({k.lower(): v for k, v in self.headers.items()})
                body = b'{"instance_id": "rec"}'
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.ip = next_loopback_ip()
        self.server = ThreadingHTTPServer((self.ip, 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder():  # type: ignore[no-untyped-def]
    rec = HeaderRecorder()
    yield rec
    rec.close()


def get(port: int, headers: dict[str, str] | None = None) -> int:
    return requests.get(f"http://127.0.0.1:{port}/predict", headers=headers or {}, timeout=5).status_code


KEY_A = "alice:key-aaaaaaaaaaaaaaaaaaaa"
KEY_B = "bob:key-bbbbbbbbbbbbbbbbbbbbbbbb"


def test_api_key_required_and_hidden_from_the_instance(tmp_path: Path, out_dir: Path, admin_port: int,
                                                       start_envoy: StartEnvoy, recorder: HeaderRecorder) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"# clients\n{KEY_A}\n")
    port = free_port()
    log_path = tmp_path / "access.log"
    config = make_config(out_dir, admin_port, [{"name": "svc", "listen_port": port,
                                                "auth": {"api_key": {"keys_file": str(keys)}},
                                                "access_log": {"path": str(log_path)}}])
    EnvoyFileSink(config).publish(make_snapshot(config, {"svc": [Endpoint(recorder.ip, recorder.port)]}))
    start_envoy(config)
    assert wait_until(lambda: get(port, {"x-api-key": "key-aaaaaaaaaaaaaaaaaaaa"}) == 200, 10)
    served = len(recorder.seen)
    assert get(port) == 401
    assert get(port, {"x-api-key": "key-wrong-wrong-wrong-wrong"}) == 401
    assert len(recorder.seen) == served, "a refused request reached the instance"
    assert all("x-api-key" not in headers for headers in recorder.seen)
    # The JSON access log names the instance, the status and the duration.
    assert wait_until(lambda: log_path.exists() and log_path.read_text().count("\n") >= served + 2, 10)
    entries = [json.loads(line) for line in log_path.read_text().splitlines()]
    ok = [e for e in entries if e["status"] == 200]
    assert ok and ok[0]["instance"] == f"{recorder.ip}:{recorder.port}" and ok[0]["service"] == "svc"
    assert {e["status"] for e in entries} == {200, 401}
    assert all("duration_ms" in e for e in entries)
    assert "key-aaaaaaaaaaaaaaaaaaaa" not in log_path.read_text()


def test_keys_rotate_without_restart(tmp_path: Path, out_dir: Path, admin_port: int, start_envoy: StartEnvoy,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELARTS_PASSWORD", DEFAULT_PASSWORD)
    keys = tmp_path / "secret" / "keys"
    keys.parent.mkdir()
    keys.write_text(KEY_A + "\n")
    emu_config = EmulatorConfig.model_validate({"services": [{"name": "llm", "service_id": "svc-llm",
                                                              "instances": 2}]})
    port = free_port()
    with Emulator(emu_config) as emu:
        config = parse_config({
            "modelarts": {"iam_url": emu.iam_url, "modelarts_url": emu.modelarts_url,
                          "project_id": DEFAULT_PROJECT_ID},
            "auth": {"mode": "password", "domain": DEFAULT_DOMAIN, "user": DEFAULT_USER},
            "discovery": {"allowed_cidrs": ["127.0.0.0/8"], "default_poll_interval_seconds": 1},
            "services": [{"name": "llm", "service_id": "svc-llm", "listen_port": port,
                          "auth": {"api_key": {"keys_file": str(keys)}}}],
            "envoy": {"output_dir": str(out_dir), "admin_port": admin_port},
            "admin": {"port": 0},
        })
        runtime = AgentRuntime(config, sink_factory=sinks_for)
        runtime.start()
        try:
            start_envoy(config)
            assert wait_until(lambda: get(port, {"x-api-key": "key-aaaaaaaaaaaaaaaaaaaa"}) == 200, 15)
            keys.write_text(KEY_B + "\n")
            assert wait_until(lambda: get(port, {"x-api-key": "key-bbbbbbbbbbbbbbbbbbbbbbbb"}) == 200, 10)
            assert get(port, {"x-api-key": "key-aaaaaaaaaaaaaaaaaaaa"}) == 401
            # An empty keys file is refused: the old keys stay in force rather than locking everyone out.
            keys.write_text("\n")
            time.sleep(1.5)
            assert get(port, {"x-api-key": "key-bbbbbbbbbbbbbbbbbbbbbbbb"}) == 200
        finally:
            runtime.stop()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(key: rsa.RSAPrivateKey, claims: dict[str, Any], kid: str = "k1") -> str:
    header = b64url(json.dumps({"alg": "RS256", "typ": "JWT", "kid": kid}).encode())
    payload = b64url(json.dumps(claims).encode())
    signature = key.sign(f"{header}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{header}.{payload}.{b64url(signature)}"


def jwks_for(key: rsa.RSAPrivateKey, kid: str = "k1") -> dict[str, Any]:
    numbers = key.public_key().public_numbers()

    def enc(n: int) -> str:
        return b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))

    return {"keys": [{"kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid, "n": enc(numbers.n),
                      "e": enc(numbers.e)}]}


def test_jwt_required(tmp_path: Path, out_dir: Path, admin_port: int, start_envoy: StartEnvoy,
                      recorder: HeaderRecorder) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(jwks_for(key)))
    port = free_port()
    config = make_config(out_dir, admin_port, [{"name": "svc", "listen_port": port, "auth": {
        "jwt": {"issuer": "https://issuer.example", "audiences": ["modelarts"], "jwks_file": str(jwks)}}}])
    EnvoyFileSink(config).publish(make_snapshot(config, {"svc": [Endpoint(recorder.ip, recorder.port)]}))
    start_envoy(config)
    now = int(time.time())
    good = {"iss": "https://issuer.example", "aud": "modelarts", "sub": "app", "exp": now + 600}

    def bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    assert wait_until(lambda: get(port, bearer(make_jwt(key, good))) == 200, 10)
    served = len(recorder.seen)
    assert get(port) == 401
    assert get(port, bearer(make_jwt(other, good))) == 401
    assert get(port, bearer(make_jwt(key, {**good, "exp": now - 600}))) == 401
    assert get(port, bearer(make_jwt(key, {**good, "iss": "https://evil.example"}))) == 401
    assert get(port, bearer(make_jwt(key, {**good, "aud": "someone-else"}))) in (401, 403)
    assert len(recorder.seen) == served


def test_unreadable_keys_file_keeps_the_old_files(tmp_path: Path, out_dir: Path, admin_port: int) -> None:
    from agent.errors import ConfigError

    keys = tmp_path / "keys"
    keys.write_text(KEY_A + "\n")
    config = make_config(out_dir, admin_port, [{"name": "svc", "listen_port": free_port(),
                                                "auth": {"api_key": {"keys_file": str(keys)}}}])
    sink = EnvoyFileSink(config)
    sink.publish(make_snapshot(config, {}))
    before = (out_dir / "lds.json").read_text()
    keys.write_text("short\n")
    with pytest.raises(ConfigError, match="shorter than 16"):
        sink.publish(make_snapshot(config, {}, version=2))
    assert (out_dir / "lds.json").read_text() == before


def test_stats_listener_serves_only_prometheus_stats(out_dir: Path, admin_port: int, start_envoy: StartEnvoy,
                                                     recorder: HeaderRecorder) -> None:
    port, stats_port = free_port(), free_port()
    base = make_config(out_dir, admin_port, [{"name": "svc", "listen_port": port}])
    config = base.model_copy(update={"envoy": base.envoy.model_copy(update={"stats_port": stats_port,
                                                                             "stats_address": "127.0.0.1"})})
    EnvoyFileSink(config).publish(make_snapshot(config, {"svc": [Endpoint(recorder.ip, recorder.port)]}))
    start_envoy(config)
    assert wait_until(lambda: get(port) == 200, 10)
    stats = requests.get(f"http://127.0.0.1:{stats_port}/stats/prometheus", timeout=5)
    assert stats.status_code == 200 and "envoy_cluster_upstream_rq_total" in stats.text
    assert 'envoy_cluster_name="svc"' in stats.text
    # Nothing else of the admin API is reachable through it.
    for path in ("/quitquitquit", "/config_dump", "/clusters", "/stats", "/healthcheck/fail"):
        assert requests.get(f"http://127.0.0.1:{stats_port}{path}", timeout=5).status_code == 404
    assert requests.post(f"http://127.0.0.1:{stats_port}/stats/prometheus", timeout=5).status_code == 404
