"""The confused-deputy guard: a ModelArtsService may only point the controller at allowed API hosts.

The pipeline test runs a real recording HTTP server on loopback at the URL a CR names, and checks
that nothing at all reaches it (no IAM token request, no look-up), while the same CR with the host
allowed does reach it (so the listener would have seen a leak).
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes import client as k8s

from agent.cli.main import main
from agent.controller.endpoints import DEFAULT_ALLOWED_ENDPOINT_HOSTS, EndpointAllowList
from agent.controller.pipeline import Pipeline, PipelineSettings
from agent.controller.status import Problem, StatusInput, build_status, events_for
from agent.errors import ConfigError
from agent.kube.client import EventRecorder, KubeClient

PASSWORD = "allowlist-pw-0123"


@pytest.mark.parametrize("host", ["iam.cn-north-4.myhuaweicloud.com", "modelarts.ap-southeast-3.myhuaweicloud.com",
                                  "IAM.MYHUAWEICLOUD.COM.", "modelarts.eu-west-101.myhuaweicloud.eu"])
def test_the_huawei_cloud_api_domains_are_allowed_by_default(host: str) -> None:
    assert EndpointAllowList().allows(host)


@pytest.mark.parametrize("host", ["evil.example.com", "myhuaweicloud.com", "iam.myhuaweicloud.com.evil.io",
                                  "xmyhuaweicloud.com", "127.0.0.1", "169.254.169.254", ""])
def test_other_hosts_are_refused_by_default(host: str) -> None:
    assert not EndpointAllowList().allows(host)


def test_the_flag_adds_exact_hosts_ips_and_suffixes_to_the_defaults() -> None:
    allow = EndpointAllowList.parse_flag(" modelarts.internal.example.com, *.corp.example.net ,127.0.0.1,::1")
    assert allow.patterns[:len(DEFAULT_ALLOWED_ENDPOINT_HOSTS)] == DEFAULT_ALLOWED_ENDPOINT_HOSTS
    for host in ("modelarts.internal.example.com", "iam.corp.example.net", "127.0.0.1", "[::1]",
                 "iam.cn-north-4.myhuaweicloud.com"):
        assert allow.allows(host), host
    for host in ("internal.example.com", "corp.example.net", "127.0.0.2"):
        assert not allow.allows(host), host
    assert allow.refusal("spec.iamUrl", "http://127.0.0.1:5000") is None
    message = allow.refusal("spec.iamUrl", "https://evil.example.com")
    assert message is not None and "'evil.example.com'" in message and "--allowed-endpoint-hosts" in message


@pytest.mark.parametrize("value", ["*.com", "*", "a b", "evil.example.com/path", "*.-bad.example.com", "x*.y.com"])
def test_a_bad_pattern_is_a_configuration_error(value: str) -> None:
    with pytest.raises(ConfigError, match="allowed endpoint host"):
        EndpointAllowList.parse_flag(value)


def test_a_bad_flag_exits_2_with_a_clear_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["controller", "--allowed-endpoint-hosts", "*.com", "--kubeconfig", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert "must look like *.example.com" in err and "Traceback" not in err


# --- the pipeline: nothing leaves for a host that is not allowed ---------------------------------------


class Recorder(BaseHTTPRequestHandler):
    requests: list[str] = []

    def _record(self) -> None:
        Recorder.requests.append(f"{self.command} {self.path}")
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _record

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def listener() -> Iterator[str]:
    Recorder.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class SecretApi(KubeClient):
    """Serves one password Secret; records every GET so a test can tell whether the Secret was even read."""

    def __init__(self) -> None:
        super().__init__(k8s.ApiClient(k8s.Configuration(host="http://127.0.0.1:9")))
        self.gets: list[str] = []

    def get(self, path: str, timeout: float | None = None) -> dict[str, Any] | None:
        self.gets.append(path)
        data = {"domain": "acme", "user": "bob", "password": PASSWORD}
        return {"metadata": {"namespace": "ns", "name": "creds"},
                "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def cr(url: str) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": "llm", "uid": "u1", "generation": 1},
            "spec": {"projectId": "p", "serviceId": "sid", "modelartsUrl": url, "iamUrl": url,
                     "credentialsSecretRef": {"name": "creds"}, "pollInterval": "1s"}}


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def run_pipeline(allow: EndpointAllowList, url: str, seconds: float) -> tuple[Pipeline, SecretApi]:
    kube = SecretApi()
    pipeline = Pipeline(kube, PipelineSettings(allowed_endpoints=allow), lambda: True,
                        EventRecorder(kube, "test", "me"))
    pipeline.submit({"ns/llm": cr(url)})
    pipeline.reconcile()
    wait_until(lambda: bool(Recorder.requests), seconds)
    pipeline.close(timeout=2)
    kube.close()
    return pipeline, kube


def test_a_cr_naming_a_host_outside_the_list_sends_nothing_and_says_why(listener: str) -> None:
    pipeline, kube = run_pipeline(EndpointAllowList(), listener, seconds=5)
    assert Recorder.requests == []  # no IAM token request, no look-up: the password never left
    assert not any("/secrets/" in path for path in kube.gets)  # the Secret was not even read
    problem = pipeline.describe()["problems"]["ns/llm"]
    assert problem["reason"] == "EndpointNotAllowed"
    assert "127.0.0.1" in problem["message"] and PASSWORD not in json.dumps(problem)
    # What the status writer makes of it: Ready=False with that reason, and a Warning Event.
    status = build_status(StatusInput(generation=1, problem=Problem(**problem)), {}, "2030-01-01T00:00:00Z")
    assert status is not None
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "EndpointNotAllowed")
    events = events_for({}, status, Problem(**problem))
    assert [(e.type, e.reason) for e in events] == [("Warning", "EndpointNotAllowed")]


def test_the_same_cr_with_the_host_allowed_does_reach_it(listener: str) -> None:
    """The control: the listener does see the controller's requests once its host is allowed."""
    pipeline, _ = run_pipeline(EndpointAllowList.parse_flag("127.0.0.1"), listener, seconds=10)
    assert any(r.startswith("POST /v3/auth/tokens") for r in Recorder.requests), Recorder.requests
    assert "ns/llm" not in pipeline.describe()["problems"]
