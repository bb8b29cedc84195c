"""The Kubernetes API as the agent uses it: plain REST calls, server-side apply, watch streams, Events.

Explicit paths instead of `DynamicClient`: the objects are few and known, and DynamicClient's
discovery would add start-up requests and a shared cache file in /tmp. Every call has a timeout,
and every failure becomes one `KubeApiError` with a one-line message.

Requests go through a transport: agent/kube/rest.py (urllib3 alone) for in-cluster and plain
kubeconfig credentials, which is what every sidecar pod has, so none of them loads the generated
client; agent/kube/generated.py (the official client's `ApiClient`) for everything else.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import urllib3

from agent.errors import AgentError, ConfigError
from agent.kube import FIELD_MANAGER, GROUP, VERSION
from agent.kube.metrics import K8S_CONFLICTS, K8S_WRITES
from agent.kube.rest import (
    Credentials,
    RestTransport,
    in_cluster_credentials,
    kubeconfig_context,
    kubeconfig_credentials,
)
from agent.logs import redact

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 15.0
SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

# kind -> (api group/version, plural) for the objects the agent touches.
KINDS: dict[str, tuple[str, str]] = {
    "Service": ("v1", "services"),
    "Endpoints": ("v1", "endpoints"),
    "Secret": ("v1", "secrets"),
    "Event": ("v1", "events"),
    "EndpointSlice": ("discovery.k8s.io/v1", "endpointslices"),
    "Lease": ("coordination.k8s.io/v1", "leases"),
    "ModelArtsService": (f"{GROUP}/{VERSION}", "modelartsservices"),
}


class KubeApiError(AgentError):
    """A Kubernetes API call failed. status 0 means no HTTP answer (connection refused, timeout)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason

    @property
    def retryable(self) -> bool:
        return self.status in (0, 429, 500, 502, 503, 504)


class NotLeader(AgentError):
    """A write was refused locally because this replica no longer holds the lease."""


def collection_path(kind: str, namespace: str | None = None) -> str:
    api_version, plural = KINDS[kind]
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    return f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"


def object_path(kind: str, namespace: str, name: str, subresource: str | None = None) -> str:
    path = f"{collection_path(kind, namespace)}/{name}"
    return f"{path}/{subresource}" if subresource else path


def _error_from_body(status: int, data: bytes | None) -> KubeApiError:
    reason, message = f"HTTP{status}", f"HTTP {status}"
    try:
        body = json.loads(data or b"{}")
        if isinstance(body, dict):
            reason = str(body.get("reason") or reason)
            message = str(body.get("message") or message)
    except ValueError:
        pass
    # Messages go into logs and CR status; they never carry a request body, but redact anyway.
    return KubeApiError(status, reason, redact(message)[:600])


@runtime_checkable
class Transport(Protocol):
    """Sends one request; the response body is left unread (a watch streams it)."""

    def send_request(self, method: str, path: str, query: list[tuple[str, Any]], headers: dict[str, str],
                     body: Any, timeout: float | tuple[float, float]) -> urllib3.BaseHTTPResponse: ...

    def close(self) -> None: ...


def _default_kubeconfig() -> Path | None:
    """$KUBECONFIG or ~/.kube/config when it is one file; None for a list (only the generated client merges)."""
    value = os.environ.get("KUBECONFIG") or "~/.kube/config"
    return None if os.pathsep in value else Path(value).expanduser()


def plain_credentials(kubeconfig: Path | None = None, context: str | None = None) -> Credentials | None:
    """--kubeconfig, else in-cluster, else $KUBECONFIG/~/.kube/config, as the generated client looks; None if
    only the generated client can use them."""
    if kubeconfig is not None:
        if not kubeconfig.is_file():
            raise ConfigError(f"kubeconfig {kubeconfig} does not exist")
        return kubeconfig_credentials(kubeconfig, context)
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return in_cluster_credentials()
    default = _default_kubeconfig()
    return kubeconfig_credentials(default, context) if default is not None and default.is_file() else None


def default_namespace(kubeconfig: Path | None = None) -> str:
    """The pod's namespace in a cluster ($POD_NAMESPACE or the service-account file), else the kubeconfig's."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    if kubeconfig is None and SA_NAMESPACE_FILE.is_file():
        return SA_NAMESPACE_FILE.read_text().strip() or "default"
    path = kubeconfig if kubeconfig is not None else _default_kubeconfig()
    if path is None:
        from agent.kube.generated import kubeconfig_namespace

        return kubeconfig_namespace(kubeconfig) or "default"
    try:
        namespace = kubeconfig_context(path).get("namespace")
    except ConfigError:
        return "default"
    return str(namespace) if namespace else "default"


def _iter_lines(resp: urllib3.BaseHTTPResponse) -> Iterator[str]:
    """A watch stream's lines, each as soon as its chunk arrives."""
    pending = b""
    for chunk in resp.stream(amt=None, decode_content=False):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.decode("utf-8", errors="replace")
    if pending:
        yield pending.decode("utf-8", errors="replace")


class KubeClient:
    def __init__(self, api: Transport | Any, timeout: float = DEFAULT_TIMEOUT,
                 field_manager: str = FIELD_MANAGER) -> None:
        """`api`: a Transport, or a generated `kubernetes.client.ApiClient` (wrapped)."""
        if not isinstance(api, Transport):
            from agent.kube.generated import ApiClientTransport

            api = ApiClientTransport(api)
        self.transport: Transport = api
        self.timeout = timeout
        self.field_manager = field_manager
        self._rng = random.Random()

    @classmethod
    def connect(cls, kubeconfig: Path | None = None, context: str | None = None) -> KubeClient:
        credentials = plain_credentials(kubeconfig, context)
        if credentials is not None:
            return cls(RestTransport(credentials))
        from agent.kube.generated import ApiClientTransport, load_api_client

        return cls(ApiClientTransport(load_api_client(kubeconfig, context)))

    def close(self) -> None:
        self.transport.close()

    # -- plain calls -------------------------------------------------------------------------------

    def _send(self, method: str, path: str, query: dict[str, Any] | None, body: Any, content_type: str | None,
              timeout: float | tuple[float, float] | None) -> Any:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        params = [(k, v) for k, v in (query or {}).items() if v is not None]
        try:
            return self.transport.send_request(method, path, params, headers, body, timeout or self.timeout)
        except urllib3.exceptions.SSLError as exc:
            raise KubeApiError(0, "TLSError", f"TLS to the Kubernetes API failed: {str(exc)[:200]}") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubeApiError(0, "ConnectionFailed",
                               f"cannot reach the Kubernetes API: {type(exc).__name__}") from None

    def request(self, method: str, path: str, *, query: dict[str, Any] | None = None, body: Any = None,
                content_type: str | None = None, timeout: float | None = None) -> dict[str, Any]:
        resp = self._send(method, path, query, body, content_type, timeout)
        try:
            data = resp.read()
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubeApiError(0, "ConnectionFailed", f"connection broke while reading: {type(exc).__name__}") \
                from None
        if not 200 <= resp.status <= 299:
            raise _error_from_body(resp.status, data)
        result = json.loads(data) if data else {}
        return result if isinstance(result, dict) else {}

    def get(self, path: str, timeout: float | None = None) -> dict[str, Any] | None:
        """The object, or None if it does not exist."""
        try:
            return self.request("GET", path, timeout=timeout)
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, path: str, label_selector: str | None = None,
             field_selector: str | None = None) -> tuple[list[dict[str, Any]], str]:
        """All items (paged) and the list's resourceVersion (the point to watch from)."""
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            page = self.request("GET", path, query={"labelSelector": label_selector, "fieldSelector": field_selector,
                                                    "limit": 500, "continue": token})
            items.extend(page.get("items") or [])
            meta = page.get("metadata") or {}
            token = meta.get("continue") or None
            if not token:
                return items, str(meta.get("resourceVersion") or "")

    def delete(self, path: str, kind: str) -> bool:
        """Delete; False if it was already gone."""
        try:
            self.request("DELETE", path, body={"propagationPolicy": "Background"})
        except KubeApiError as exc:
            if exc.status == 404:
                return False
            K8S_WRITES.labels(kind, "error").inc()
            raise
        K8S_WRITES.labels(kind, "deleted").inc()
        return True

    def watch(self, path: str, resource_version: str, *, label_selector: str | None = None,
              field_selector: str | None = None, timeout_seconds: int = 60) -> Iterator[dict[str, Any]]:
        """Watch events ({"type", "object"}) from `resource_version` until the server ends the stream.

        The server closes the stream after `timeout_seconds`; the client read timeout is a little longer,
        so a half-dead connection (e.g. an apiserver that vanished without a FIN) cannot hang us.
        """
        query = {"watch": "true", "resourceVersion": resource_version, "allowWatchBookmarks": "true",
                 "timeoutSeconds": timeout_seconds, "labelSelector": label_selector,
                 "fieldSelector": field_selector}
        resp = self._send("GET", path, query, None, None, (5.0, timeout_seconds + 15.0))
        if not 200 <= resp.status <= 299:
            raise _error_from_body(resp.status, resp.read())
        raw = resp
        try:
            for line in _iter_lines(raw):
                if line.strip():
                    event = json.loads(line)
                    if isinstance(event, dict):
                        yield event
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubeApiError(0, "WatchBroken", f"watch stream broke: {type(exc).__name__}") from None
        finally:
            raw.release_conn()

    # -- server-side apply -------------------------------------------------------------------------

    def apply(self, obj: dict[str, Any], *, subresource: str | None = None, attempts: int = 6,
              guard: Callable[[], bool] | None = None, stop: threading.Event | None = None) -> dict[str, Any]:
        """Server-side apply with our field manager, retrying conflicts and transient failures with backoff.

        The first try does not force: a 409 means another manager owns a field we set (someone edited
        our object). We log and count it, then force, because this controller owns these objects.
        `guard` is checked before every try, so a replica that lost the lease stops writing at once.
        """
        kind = obj["kind"] + (f"/{subresource}" if subresource else "")
        meta = obj["metadata"]
        path = object_path(obj["kind"], meta["namespace"], meta["name"], subresource)
        force = False
        delay = 0.2
        for attempt in range(1, attempts + 1):
            if guard is not None and not guard():
                raise NotLeader("not the leader any more; write skipped")
            try:
                result = self.request("PATCH", path, body=obj, content_type="application/apply-patch+yaml",
                                      query={"fieldManager": self.field_manager, "force": "true" if force else None})
            except KubeApiError as exc:
                if exc.status == 409:
                    K8S_CONFLICTS.labels(kind).inc()
                    log.warning("apply conflict; taking the fields back", extra={
                        "kind": kind, "object": f"{meta['namespace']}/{meta['name']}", "detail": str(exc)[:200]})
                    force = True
                elif not exc.retryable or attempt == attempts:
                    K8S_WRITES.labels(kind, "error").inc()
                    raise
                if attempt == attempts:
                    K8S_WRITES.labels(kind, "conflict").inc()
                    raise
                pause = delay / 2 + self._rng.uniform(0, delay / 2)
                if (stop or threading.Event()).wait(pause):
                    raise NotLeader("stopping; write abandoned") from None
                delay = min(delay * 2, 5.0)
                continue
            K8S_WRITES.labels(kind, "success").inc()
            return result
        raise AssertionError("unreachable")


def now_rfc3339(micro: bool = False) -> str:
    now = dt.datetime.now(dt.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


class EventRecorder:
    """core/v1 Events about our custom resources, shown by `kubectl describe` and `kubectl events`.

    A repeat of the same event (object, type, reason, message) within `dedupe_seconds` bumps the
    count of the existing Event instead of creating a new one, as client-go's recorder does.
    Messages are redacted and cut short: an Event must never carry a secret.
    """

    # Distinct events remembered for de-duplication; the oldest are forgotten first (the next repeat of
    # one creates a new Event, as after `dedupe_seconds`).
    MAX_SEEN = 1024

    def __init__(self, kube: KubeClient, component: str, instance: str, dedupe_seconds: float = 600.0) -> None:
        self._kube = kube
        self._component = component
        self._instance = instance
        self._dedupe = dedupe_seconds
        self._lock = threading.Lock()
        # key -> (event name, count, monotonic time), oldest first: bounded by age and by MAX_SEEN.
        self._seen: OrderedDict[str, tuple[str, int, float]] = OrderedDict()

    def emit(self, involved: dict[str, Any], event_type: str, reason: str, message: str) -> None:
        meta = involved["metadata"]
        namespace, uid = meta["namespace"], meta.get("uid", "")
        message = redact(message)[:1000]
        key = hashlib.sha256(f"{uid}|{event_type}|{reason}|{message}".encode()).hexdigest()[:16]
        now = now_rfc3339()
        mono = time.monotonic()
        with self._lock:
            seen = self._seen.get(key)
        try:
            if seen is not None and mono - seen[2] < self._dedupe:
                name, count = seen[0], seen[1] + 1
                self._kube.request("PATCH", object_path("Event", namespace, name),
                                   body={"count": count, "lastTimestamp": now},
                                   content_type="application/merge-patch+json")
            else:
                name, count = f"{meta['name']}.{key}", 1
                body = {
                    "apiVersion": "v1", "kind": "Event",
                    "metadata": {"name": name, "namespace": namespace},
                    "involvedObject": {"apiVersion": involved["apiVersion"], "kind": involved["kind"],
                                       "name": meta["name"], "namespace": namespace, "uid": uid,
                                       "resourceVersion": meta.get("resourceVersion", "")},
                    "type": event_type, "reason": reason, "message": message,
                    "source": {"component": self._component},
                    "reportingComponent": self._component, "reportingInstance": self._instance[:128],
                    "firstTimestamp": now, "lastTimestamp": now, "count": 1,
                }
                try:
                    self._kube.request("POST", collection_path("Event", namespace), body=body)
                except KubeApiError as exc:
                    if exc.status != 409:  # an earlier replica made it: bump it instead
                        raise
                    self._kube.request("PATCH", object_path("Event", namespace, name),
                                       body={"lastTimestamp": now}, content_type="application/merge-patch+json")
            K8S_WRITES.labels("Event", "success").inc()
            with self._lock:
                self._seen[key] = (name, count, mono)
                self._seen.move_to_end(key)
                while self._seen and (len(self._seen) > self.MAX_SEEN
                                      or mono - next(iter(self._seen.values()))[2] >= self._dedupe):
                    self._seen.popitem(last=False)
        except KubeApiError as exc:
            # Events are best effort: losing one must never block syncing.
            K8S_WRITES.labels("Event", "error").inc()
            log.warning("could not record event: %s", exc, extra={"reason": reason})
