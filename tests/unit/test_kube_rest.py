"""agent/kube/rest.py: the sidecar's own HTTPS transport (no generated client), as strict as the generated one.

A real TLS server on loopback with throwaway certificates: the CA is checked (a file, inline data, or an
unrelated CA that must fail), the bearer token is sent (and a token file re-read once a minute), client
certificates work, and credentials only the generated client implements fall back to it.
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.errors import ConfigError
from agent.kube.client import KubeApiError, KubeClient, _iter_lines, default_namespace
from agent.kube.rest import TOKEN_REREAD_SECONDS, RestTransport, in_cluster_credentials, kubeconfig_credentials
from agent.logs import redact
from tests.xds.pki import XdsPki, make_pki


class _Handler(BaseHTTPRequestHandler):
    seen: list[dict[str, Any]] = []

    def do_GET(self) -> None:
        peer = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
        _Handler.seen.append({"path": self.path, "authorization": self.headers.get("Authorization", ""),
                              "client_cert": bool(peer)})
        body = json.dumps({"kind": "EndpointSliceList", "metadata": {"resourceVersion": "7"}, "items": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def pki(tmp_path: Path) -> XdsPki:
    return make_pki(tmp_path / "pki")


def _serve(pki: XdsPki, require_client_cert: bool = False) -> Iterator[str]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(pki.ca)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Handler.seen = []
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def https(pki: XdsPki) -> Iterator[str]:
    yield from _serve(pki)


@pytest.fixture
def https_mtls(pki: XdsPki) -> Iterator[str]:
    yield from _serve(pki, require_client_cert=True)


def kubeconfig(path: Path, cluster: dict[str, Any], user: dict[str, Any], namespace: str | None = None) -> Path:
    context: dict[str, Any] = {"cluster": "c", "user": "u", **({"namespace": namespace} if namespace else {})}
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "ctx",
        "clusters": [{"name": "c", "cluster": cluster}], "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "ctx", "context": context}]}))
    return path


def test_a_token_kubeconfig_goes_over_verified_tls_without_the_generated_client(tmp_path: Path, pki: XdsPki,
                                                                                https: str) -> None:
    config = kubeconfig(tmp_path / "kc", {"server": https, "certificate-authority": str(pki.ca)},
                        {"token": "sidecar-token-1234"}, namespace="apps")
    kube = KubeClient.connect(config)
    try:
        assert isinstance(kube.transport, RestTransport)
        items, version = kube.list("/apis/discovery.k8s.io/v1/namespaces/apps/endpointslices",
                                   label_selector="kubernetes.io/service-name=llm")
    finally:
        kube.close()
    assert (items, version) == ([], "7")
    assert _Handler.seen[0]["authorization"] == "Bearer sidecar-token-1234"
    assert _Handler.seen[0]["path"] == ("/apis/discovery.k8s.io/v1/namespaces/apps/endpointslices"
                                        "?labelSelector=kubernetes.io/service-name%3Dllm&limit=500")
    assert redact("token sidecar-token-1234") == "token ***"  # registered as a secret
    assert default_namespace(config) == "apps"


def test_inline_ca_data_is_trusted_and_an_unrelated_ca_is_refused(tmp_path: Path, pki: XdsPki, https: str) -> None:
    inline = kubeconfig(tmp_path / "inline", {
        "server": https, "certificate-authority-data": base64.b64encode(pki.ca.read_bytes()).decode()},
        {"token": "t0k3n-inline"})
    kube = KubeClient.connect(inline)
    assert kube.get("/api/v1/namespaces/apps/services/llm") is not None
    kube.close()
    wrong = kubeconfig(tmp_path / "wrong", {"server": https, "certificate-authority": str(pki.other_ca)},
                       {"token": "t0k3n-wrong"})
    kube = KubeClient.connect(wrong)
    with pytest.raises(KubeApiError) as caught:
        kube.get("/api/v1/namespaces/apps/services/llm")
    kube.close()
    assert (caught.value.status, caught.value.reason) == (0, "TLSError")
    assert len(_Handler.seen) == 1, "a request went out over an unverified connection"


def test_client_certificates_from_the_kubeconfig(tmp_path: Path, pki: XdsPki, https_mtls: str) -> None:
    config = kubeconfig(tmp_path / "kc", {"server": https_mtls, "certificate-authority": str(pki.ca)},
                        {"client-certificate": str(pki.client_cert), "client-key": str(pki.client_key)})
    kube = KubeClient.connect(config)
    assert kube.get("/api/v1/namespaces/apps/services/llm") is not None
    kube.close()
    assert _Handler.seen[0]["client_cert"] and _Handler.seen[0]["authorization"] == ""


def test_a_token_file_is_read_at_start_and_again_once_a_minute(tmp_path: Path, pki: XdsPki, https: str) -> None:
    token = tmp_path / "token"
    token.write_text("first-token-abcd\n")
    credentials = kubeconfig_credentials(kubeconfig(tmp_path / "kc", {
        "server": https, "certificate-authority": str(pki.ca)}, {"tokenFile": "token"}))  # relative to the file
    assert credentials is not None
    now = [100.0]
    kube = KubeClient(RestTransport(credentials, clock=lambda: now[0]))
    kube.get("/api/v1/namespaces/apps/services/llm")
    token.write_text("second-token-efgh")  # the kubelet rotated it
    now[0] += TOKEN_REREAD_SECONDS - 1
    kube.get("/api/v1/namespaces/apps/services/llm")
    now[0] += 1
    kube.get("/api/v1/namespaces/apps/services/llm")
    token.write_text("")  # a rotation caught half-way: keep the last good token
    now[0] += TOKEN_REREAD_SECONDS
    kube.get("/api/v1/namespaces/apps/services/llm")
    kube.close()
    assert [s["authorization"] for s in _Handler.seen] == [
        "Bearer first-token-abcd", "Bearer first-token-abcd", "Bearer second-token-efgh", "Bearer second-token-efgh"]
    assert redact("second-token-efgh") == "***"
    token.write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        RestTransport(credentials)


@pytest.mark.parametrize(("cluster", "user"), [
    ({"insecure-skip-tls-verify": True}, {"token": "abcd"}),
    ({"proxy-url": "http://127.0.0.1:9"}, {"token": "abcd"}),
    ({}, {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "true"}}),
    ({}, {"username": "u", "password": "p"}),
])
def test_credentials_only_the_generated_client_implements_go_to_it(tmp_path: Path, cluster: dict[str, Any],
                                                                   user: dict[str, Any]) -> None:
    config = kubeconfig(tmp_path / "kc", {"server": "https://127.0.0.1:9", **cluster}, user)
    assert kubeconfig_credentials(config) is None
    from agent.kube.generated import ApiClientTransport

    if "exec" in user:
        return  # loading it would run the plugin; that it is not ours is what matters here
    kube = KubeClient.connect(config)
    assert isinstance(kube.transport, ApiClientTransport)
    kube.close()


def test_in_cluster_credentials_need_the_service_account_files(tmp_path: Path) -> None:
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    with pytest.raises(ConfigError, match="service account token"):
        in_cluster_credentials(env, tmp_path)
    (tmp_path / "token").write_text("pod-token-wxyz")
    (tmp_path / "ca.crt").write_text("")
    with pytest.raises(ConfigError, match=r"service account CA .* empty"):
        in_cluster_credentials(env, tmp_path)
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    credentials = in_cluster_credentials(env, tmp_path)
    assert credentials.server == "https://[fd00::1]:443"
    assert (credentials.token_file, credentials.ca_file) == (tmp_path / "token", tmp_path / "ca.crt")
    with pytest.raises(ConfigError, match="KUBERNETES_SERVICE_HOST"):
        in_cluster_credentials({}, tmp_path)


class _Chunks:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def stream(self, amt: int | None = None, decode_content: bool = True) -> Iterator[bytes]:
        yield from self.chunks


def test_watch_lines_are_split_across_chunks() -> None:
    chunks = [b'{"type":"ADDED"}\n{"ty', b'pe":"MODIFIED"}\n', b'{"type":"DELETED"}']
    assert list(_iter_lines(_Chunks(chunks))) == [  # type: ignore[arg-type]
        '{"type":"ADDED"}', '{"type":"MODIFIED"}', '{"type":"DELETED"}']


@pytest.mark.parametrize("server", ["http://192.168.205.10:8080", "http://apiserver.example:80", "http://10.0.0.1"])
@pytest.mark.parametrize("user", [{"token": "t0k%en'\"s3cret"}, {"tokenFile": "token"}])
def test_a_bearer_token_is_never_sent_over_plain_http_to_another_host(tmp_path: Path, server: str,
                                                                      user: dict[str, Any]) -> None:
    config = kubeconfig(tmp_path / "kc", {"server": server}, user)
    with pytest.raises(ConfigError, match="refusing to send a bearer token") as caught:
        kubeconfig_credentials(config)
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize("server", ["http://127.0.0.1:8080", "http://localhost:8080", "http://[::1]:8080"])
def test_plain_http_with_a_token_is_allowed_to_a_loopback_apiserver(tmp_path: Path, server: str) -> None:
    credentials = kubeconfig_credentials(kubeconfig(tmp_path / "kc", {"server": server}, {"token": "abcd"}))
    assert credentials is not None and credentials.server == server
