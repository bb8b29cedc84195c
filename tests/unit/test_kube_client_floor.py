"""The `kubernetes` client floor in pyproject.toml is the one the code needs, and the APIs it uses work.

The generated client is KubeClient's transport for credentials agent/kube/rest.py does not implement;
agent/kube/generated.py uses the newer generated client: `ApiClient.param_serialize` and the
`call_api(method, url, headers, body, post_params)` signature, auth scheme "BearerToken". Those
first ship in 37.0.0 (checked by running this file against 36.0.1, 36.0.2 and 37.0.0 installed
side by side: 36.x has neither, and the last test fails there with AttributeError). 36.0.0 and
36.0.1 also dropped the bearer token of kubeconfig and in-cluster logins (stored under
api_key['authorization'], which they no longer read), so every request went out anonymous;
37.0.0 reads both keys.

`scripts/check-kubernetes-floor [VERSION]` runs this file against the floor itself (or any
version), installed into a throw-away directory. The last test is the real check: a kubeconfig
with a bearer token, loaded by the agent's own loader, and a GET through KubeClient to a loopback
server that records what arrives.
"""

from __future__ import annotations

import json
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from agent.kube.client import KubeClient
from agent.kube.generated import ApiClientTransport, load_api_client

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def kubernetes_requirement() -> Requirement:
    deps = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["dependencies"]
    return next(Requirement(d) for d in deps if Requirement(d).name == "kubernetes")


def test_the_floor_excludes_clients_without_the_api_used_and_the_bearer_token_regression() -> None:
    spec = kubernetes_requirement().specifier
    for bad in ("29.0.0", "35.0.0", "36.0.0", "36.0.1", "36.0.2", "36.0.3"):
        assert not spec.contains(bad), f"{spec} admits kubernetes {bad}"
    for good in ("37.0.0", "37.0.2"):
        assert spec.contains(good), f"{spec} refuses kubernetes {good}"


def test_the_installed_client_satisfies_the_floor() -> None:
    installed = Version(version("kubernetes"))
    assert kubernetes_requirement().specifier.contains(installed), installed


class _Recorder(BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:
        _Recorder.seen.append({"path": self.path, "authorization": self.headers.get("Authorization", "")})
        body = json.dumps({"kind": "Service", "metadata": {"name": "llm", "namespace": "ns"}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[str]:
    _Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_kubeconfig_bearer_token_reaches_the_apiserver(recorder: str, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": recorder}}],
        "users": [{"name": "sa", "user": {"token": "floor-check-token"}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "sa"}}],
    }))
    kube = KubeClient(ApiClientTransport(load_api_client(kubeconfig)))  # the generated client, whatever connect picks
    try:
        got = kube.get("/api/v1/namespaces/ns/services/llm")
    finally:
        kube.close()
    assert got is not None and got["metadata"]["name"] == "llm"
    assert _Recorder.seen == [{"path": "/api/v1/namespaces/ns/services/llm",
                               "authorization": "Bearer floor-check-token"}]
