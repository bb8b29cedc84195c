"""Fast checks of the controller's pure rules: CR status and events, Secret parsing, lease timing
(with an in-memory Lease API), sink manifests, the sidecar source's validation and config loading.
Everything against a real apiserver is in tests/kube/."""

from __future__ import annotations

import base64
import copy
import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from envoy.config.core.v3 import config_source_pb2
from kubernetes import client as k8s

from agent.cli.sidecar_cmd import load_sidecar_config
from agent.config import AuthMode, DiscoveryConfig, ServiceSpec, parse_config
from agent.controller.crd import parse_resource
from agent.controller.credentials import CredentialsProblem, parse_secret
from agent.controller.objects import Owner, port_name
from agent.controller.sink import KubernetesSink, endpoints_manifest
from agent.controller.status import Problem, StatusInput, build_status, events_for, rfc3339
from agent.envoy.resources import build_resources
from agent.errors import ConfigError
from agent.kube.client import KubeApiError, KubeClient
from agent.kube.leader import LeaderElector, LeaseConfig
from agent.logs import redact
from agent.model import Endpoint, ServiceSnapshot, Snapshot, effective_protocol
from agent.snapshot import SnapshotStore, SyncStatus
from agent.sources.kubernetes import KubernetesSource, slice_schema
from agent.sources.slices import endpoints_from_slices
from agent.validation import parse_networks

NOW = "2030-01-01T00:00:00Z"
LATER = "2030-01-01T00:01:00Z"
SPEC = ServiceSpec(name="ns--llm", service_id="sid")


def synced(endpoints: tuple[Endpoint, ...], **status: Any) -> StatusInput:
    sync = SyncStatus(name="ns--llm", service_id="sid", endpoint_count=len(endpoints), synced=True,
                      last_success=1.9e9, last_attempt=1.9e9, **status)
    return StatusInput(generation=2, sync=sync, effective_interval=3.1,
                       service=ServiceSnapshot(SPEC.name, SPEC.service_id, endpoints, synced=True))


EPS = (Endpoint("192.168.0.1", 80), Endpoint("192.168.0.2", 80))


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


# --- status and events ------------------------------------------------------------------------------


def test_status_of_a_synced_service() -> None:
    status = build_status(synced(EPS), {}, NOW)
    assert status is not None
    assert status["endpointCount"] == 2 and status["observedGeneration"] == 2
    assert status["effectivePollIntervalSeconds"] == 3.1
    cond = conditions(status)
    assert (cond["Ready"]["status"], cond["Ready"]["reason"]) == ("True", "EndpointsAvailable")
    assert cond["Synced"]["status"] == "True" and cond["Stale"]["status"] == "False"
    assert cond["RateLimited"]["reason"] == "WithinBudget"
    assert all(c["lastTransitionTime"] == NOW and c["observedGeneration"] == 2 for c in cond.values())


def test_transition_time_moves_only_with_the_status() -> None:
    first = build_status(synced(EPS), {}, NOW)
    assert first is not None
    throttled = build_status(synced(EPS, last_error="throttled by the API gateway", last_error_kind="throttled",
                                    rate_limited=True), first, LATER)
    assert throttled is not None
    cond = conditions(throttled)
    assert cond["Ready"]["lastTransitionTime"] == NOW  # still True
    assert (cond["Synced"]["status"], cond["Synced"]["reason"], cond["Synced"]["lastTransitionTime"]) == \
        ("False", "Throttled", LATER)
    assert cond["RateLimited"]["status"] == "True"
    assert [e.reason for e in events_for(first, throttled, None)] == ["SyncFailed"]
    assert events_for(throttled, throttled, None) == []  # no repeat while it stays failed
    again = build_status(synced(EPS), throttled, LATER)
    assert again is not None
    assert [e.reason for e in events_for(throttled, again, None)] == ["SyncRecovered"]


def test_a_poll_that_changes_nothing_writes_no_status() -> None:
    # Every CR is polled about once a minute: a lastSyncTime that moved on each poll made one status write per CR
    # per poll, ~1,000 a minute at 1,000 CRs (bench/controller_scale.py). Stale says when look-ups stop working.
    first = build_status(synced(EPS), {}, NOW)
    assert first is not None
    poll = synced(EPS)
    assert poll.sync is not None
    poll = dataclasses.replace(poll, sync=dataclasses.replace(poll.sync, last_success=1.9e9 + 60,
                                                              last_attempt=1.9e9 + 60))
    assert build_status(poll, first, LATER) == first
    # A look-up that changes something does carry its own time.
    moved = dataclasses.replace(poll, service=ServiceSnapshot(SPEC.name, SPEC.service_id, EPS[:1], synced=True))
    status = build_status(moved, first, LATER)
    assert status is not None and status["endpointCount"] == 1
    assert status["lastSyncTime"] == rfc3339(1.9e9 + 60) != first["lastSyncTime"]


def test_endpoint_changes_make_one_event_with_the_difference() -> None:
    before = build_status(synced(EPS), {}, NOW)
    after = build_status(synced((EPS[0], Endpoint("192.168.0.3", 80))), before or {}, LATER)
    assert before is not None and after is not None
    [event] = events_for(before, after, None)
    assert (event.type, event.reason) == ("Normal", "EndpointsChanged")
    assert event.message == "endpoints 2 -> 2 (+192.168.0.3:80, -192.168.0.2:80)"


def test_problem_status_keeps_what_the_objects_still_hold() -> None:
    good = build_status(synced(EPS), {}, NOW)
    assert good is not None
    problem = Problem("SecretNotFound", "Secret ns/x does not exist")
    bad = build_status(StatusInput(generation=3, problem=problem), good, LATER)
    assert bad is not None
    assert bad["endpointCount"] == 2 and bad["endpoints"] == good["endpoints"]  # slices were left in place
    cond = conditions(bad)
    assert (cond["Ready"]["status"], cond["Ready"]["reason"]) == ("False", "SecretNotFound")
    assert [(e.type, e.reason) for e in events_for(good, bad, problem)] == [("Warning", "SecretNotFound")]
    assert events_for(bad, bad, problem) == []


def test_a_new_leader_keeps_the_old_status_until_its_first_poll() -> None:
    current = build_status(synced(EPS), {}, NOW)
    assert current is not None
    pending = StatusInput(generation=2, sync=SyncStatus(name="ns--llm", service_id="sid"))
    assert build_status(pending, current, LATER) is None
    # ...unless the spec changed meanwhile (generation moved): then say it is pending.
    fresh = build_status(StatusInput(generation=3, sync=SyncStatus(name="ns--llm", service_id="sid")), current,
                         LATER)
    assert fresh is not None and conditions(fresh)["Synced"]["reason"] == "Pending"


def test_no_endpoints_after_a_sync_is_not_ready() -> None:
    status = build_status(synced((), service_status="stopped"), {}, NOW)
    assert status is not None
    ready = conditions(status)["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "NoEndpoints") and "stopped" in ready["message"]


# --- Secrets ----------------------------------------------------------------------------------------


def secret(**data: str) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": "creds"},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def test_secret_modes_and_redaction() -> None:
    creds = parse_secret(secret(domain="acme", user="bob", password="s3cret-pass"))
    assert (creds.mode, creds.domain, creds.user) == (AuthMode.password, "acme", "bob")
    assert "s3cret-pass" not in repr(creds)
    assert redact("the password s3cret-pass leaked") == "the password *** leaked"
    assert redact("user bob") == "user bob"  # names stay readable
    assert parse_secret(secret(ak="AK123456", sk="sk-value-1")).mode is AuthMode.aksk
    assert parse_secret(secret(token="tok-value-123")).credentials().token is not None
    assert parse_secret(secret(token="a")).fingerprint != parse_secret(secret(token="b")).fingerprint


@pytest.mark.parametrize(("data", "message"), [
    ({"user": "bob", "password": "pw-123456"}, "holds a password but lacks the domain or user key"),
    ({"ak": "AK123456"}, "needs both the ak and the sk key"),
    ({"note": "hello"}, "has no usable credentials: expected domain+user+password, ak+sk, or token (keys: note)"),
])
def test_unusable_secrets_are_explained_without_values(data: dict[str, str], message: str) -> None:
    with pytest.raises(CredentialsProblem) as caught:
        parse_secret(secret(**data))
    assert caught.value.problem.reason == "InvalidSecret"
    assert message in caught.value.problem.message
    assert not any(v in caught.value.problem.message for v in data.values() if v != "note")


def test_cr_with_host_bits_in_a_cidr_fails_the_controller_parse() -> None:
    cr = {"metadata": {"name": "x", "namespace": "ns"},
          "spec": {"projectId": "p", "serviceId": "s", "modelartsUrl": "https://m.example.com",
                   "credentialsSecretRef": {"name": "c"}, "allowedCIDRs": ["192.168.205.1/24"]}}
    with pytest.raises(ConfigError, match="has host bits set"):
        parse_resource(cr)


# --- leader election timing, against an in-memory Lease API ----------------------------------------------


class LeaseApi(KubeClient):
    """Just enough of the Lease API: optimistic concurrency on resourceVersion, and a way to cut one
    candidate off (its requests fail like a network partition)."""

    def __init__(self) -> None:
        super().__init__(k8s.ApiClient(k8s.Configuration()))
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.cut_off: set[str] = set()
        self.lock = threading.Lock()

    def _check(self, who: str) -> None:
        if who in self.cut_off:
            raise KubeApiError(0, "ConnectionFailed", "partitioned")

    def get(self, path: str, timeout: float | None = None) -> dict[str, Any] | None:
        with self.lock:
            return copy.deepcopy(self.lease)

    def list(self, path: str, label_selector: str | None = None,
             field_selector: str | None = None) -> tuple[list[dict[str, Any]], str]:
        raise KubeApiError(0, "ConnectionFailed", "no watch in this fake")  # followers fall back to GETs

    def request(self, method: str, path: str, *, query: dict[str, Any] | None = None, body: Any = None,
                content_type: str | None = None, timeout: float | None = None) -> dict[str, Any]:
        self._check(body["spec"].get("holderIdentity", ""))  # who is writing: the holder it asks for
        with self.lock:
            if method == "POST":
                if self.lease is not None:
                    raise KubeApiError(409, "AlreadyExists", "exists")
            elif body["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:  # type: ignore[index]
                raise KubeApiError(409, "Conflict", "stale resourceVersion")
            self.version += 1
            self.lease = copy.deepcopy(body)
            self.lease["metadata"]["resourceVersion"] = str(self.version)
            return copy.deepcopy(self.lease)


def test_a_cut_off_leader_stops_before_anyone_takes_over() -> None:
    api = LeaseApi()
    stop = threading.Event()
    timeline: list[tuple[float, str]] = []

    def elector(name: str) -> LeaderElector:
        config = LeaseConfig("ns", "lease", name, lease_duration=2.0, renew_deadline=1.2, retry_period=0.2)
        return LeaderElector(api, config, lambda: timeline.append((time.monotonic(), f"{name} started")),
                             lambda: timeline.append((time.monotonic(), f"{name} stopped")), stop)

    a = elector("a").start()
    b: LeaderElector | None = None
    try:
        deadline = time.monotonic() + 3
        while not a.is_leader() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert a.is_leader()
        b = elector("b").start()
        time.sleep(0.5)
        assert not b.is_leader()
        api.cut_off.add("a")  # a can no longer renew; b still sees the old record
        cut = time.monotonic()
        deadline = time.monotonic() + 5
        while not b.is_leader() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert b.is_leader() and not a.is_leader()
        events = [e for _, e in timeline]
        assert events.index("a stopped") < events.index("b started"), timeline
        stopped_a = next(t for t, e in timeline if e == "a stopped")
        assert stopped_a - cut <= 1.2 + 0.2 + 0.3  # renew deadline (+ one retry period, + slack)
    finally:
        stop.set()
        for one in (a, b):
            if one is not None:  # let them finish (and log) while the test still owns the log capture
                one.interrupt()
                one.thread.join(5)


def test_lease_timings_must_be_ordered() -> None:
    with pytest.raises(ConfigError, match="retry period"):
        LeaseConfig("ns", "l", "me", lease_duration=10, renew_deadline=10, retry_period=2)
    derived = LeaseConfig.derived("ns", "l", "me", 15)
    assert (derived.renew_deadline, derived.retry_period) == (10.0, 2.0)


# --- sink manifests, sidecar source, sidecar config ---------------------------------------------------


class ApplyRecorder(KubeClient):
    """Records server-side applies; no Service exists yet, no slice to delete."""

    def __init__(self) -> None:
        super().__init__(k8s.ApiClient(k8s.Configuration()))
        self.applied: list[dict[str, Any]] = []

    def get(self, path: str, timeout: float | None = None) -> dict[str, Any] | None:
        return None

    def apply(self, obj: dict[str, Any], **_kwargs: Any) -> dict[str, Any]:
        self.applied.append(obj)
        return obj

    def list(self, path: str, label_selector: str | None = None,
             field_selector: str | None = None) -> tuple[list[dict[str, Any]], str]:
        return [], "1"


def ADS(_cluster: str) -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(ads=config_source_pb2.AggregatedConfigSource())


MIXES = [
    [],
    [Endpoint("10.0.0.1", 1, "grpc")],
    [Endpoint("10.0.0.1", 1, "grpc"), Endpoint("10.0.0.2", 1, "http")],
    [Endpoint("10.0.0.1", 1, "https"), Endpoint("10.0.0.2", 1, "https"), Endpoint("10.0.0.3", 1, "http")],
    [Endpoint("10.0.0.1", 1, "tcp"), Endpoint("10.0.0.2", 1, "tcp"), Endpoint("10.0.0.3", 1, "http")],
]


@pytest.mark.parametrize("endpoints", MIXES, ids=lambda eps: "+".join(e.schema for e in eps) or "none")
def test_protocol_auto_is_one_rule_for_run_controller_and_sidecar(endpoints: list[Endpoint]) -> None:
    """`run` (Envoy resources from ModelArts) and controller + sidecar (Service and slices, read back by the
    sidecar) speak the same protocol to an `auto` service, whatever mix of schemas ModelArts reports."""
    cr = parse_resource({"metadata": {"name": "llm", "namespace": "ns", "uid": "u1"},
                         "spec": {"projectId": "p", "serviceId": "s", "modelartsUrl": "https://m.example.com",
                                  "credentialsSecretRef": {"name": "c"}}})
    spec = cr.service_spec(15).model_copy(update={"listen_port": 10080})
    svc = ServiceSnapshot(spec.name, spec.service_id, endpoints=tuple(sorted(endpoints)), synced=True)
    run_protocol = effective_protocol("auto", endpoints)
    assert effective_protocol(spec.protocol, svc.endpoints) == run_protocol
    # What `run` builds: an HTTP connection manager, or a TCP proxy for tcp.
    config = parse_config({"modelarts": {"iam_url": "http://127.0.0.1:9", "modelarts_url": "http://127.0.0.1:9",
                                         "project_id": "p"}, "auth": {"mode": "token"},
                           "services": [spec.model_dump()]}, "test")
    listener = build_resources(Snapshot(1, {spec.name: svc}), config, ADS).listeners[0]
    run_filter = listener.filter_chains[0].filters[0].name
    # What the controller writes.
    kube = ApplyRecorder()
    KubernetesSink(kube, lambda: {cr.key: cr}, lambda: True, threading.Event())._publish_one(cr, svc)
    service = next(o for o in kube.applied if o["kind"] == "Service")
    assert service["spec"]["ports"][0]["name"] == port_name(run_protocol)
    slices = [o for o in kube.applied if o["kind"] == "EndpointSlice"]
    if endpoints:
        # What a sidecar following those slices renders: the same protocol and the same Envoy filter.
        sidecar_schema = slice_schema("auto", slices)
        assert sidecar_schema == run_protocol
        read_back = endpoints_from_slices(slices, sidecar_schema)
        sidecar_svc = ServiceSnapshot(spec.name, spec.service_id, endpoints=read_back, synced=True)
        assert effective_protocol(spec.protocol, sidecar_svc.endpoints) == run_protocol
        sidecar_listener = build_resources(Snapshot(1, {spec.name: sidecar_svc}), config, ADS).listeners[0]
        assert sidecar_listener.filter_chains[0].filters[0].name == run_filter


def test_legacy_endpoints_manifest() -> None:
    cr = parse_resource({"metadata": {"name": "llm", "namespace": "ns", "uid": "u1"},
                         "spec": {"projectId": "p", "serviceId": "s", "modelartsUrl": "https://m.example.com",
                                  "credentialsSecretRef": {"name": "c"}}})
    manifest = endpoints_manifest(cr, [Endpoint("10.0.0.1", 80), Endpoint("10.0.0.2", 80, ready=False)], "http",
                                  Owner("llm", "u1"))
    assert manifest["metadata"]["labels"]["endpointslice.kubernetes.io/skip-mirror"] == "true"
    assert manifest["subsets"] == [{"ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
                                    "addresses": [{"ip": "10.0.0.1"}], "notReadyAddresses": [{"ip": "10.0.0.2"}]}]


def test_sidecar_source_revalidates_slice_addresses() -> None:
    store = SnapshotStore([ServiceSpec(name="llm", service_id="llm")], DiscoveryConfig())
    source = KubernetesSource(KubeClient(k8s.ApiClient(k8s.Configuration())), "ns",
                              ServiceSpec(name="llm", service_id="llm"), store, parse_networks(["10.0.0.0/8"]),
                              100, threading.Event())
    slices = {"ns/a": {"ports": [{"name": "https", "port": 443, "appProtocol": "https"}],
                       "endpoints": [{"addresses": ["10.0.0.5"], "conditions": {"ready": True}},
                                     {"addresses": ["169.254.169.254"], "conditions": {"ready": True}},
                                     {"addresses": ["192.168.1.1"], "conditions": {"ready": True}}]}}
    assert slice_schema("auto", list(slices.values())) == "https"
    source._on_change(slices)
    assert store.snapshot.services["llm"].endpoints == (Endpoint("10.0.0.5", 443, "https"),)
    source._on_change({})
    assert store.snapshot.services["llm"].endpoints == ()  # a sync to empty is believed at once


def test_sidecar_config_needs_no_modelarts_section(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("services:\n  - name: chat\n    listen_port: 10080\n")
    config = load_sidecar_config(path, ["chat"])
    assert config.services[0].name == "chat"
    with pytest.raises(ConfigError, match="has no service named other"):
        load_sidecar_config(path, ["other"])
