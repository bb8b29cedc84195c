"""HTTPS to the Kubernetes API on urllib3 alone: the credentials a pod or a plain kubeconfig gives.

Why not the generated client (`kubernetes`) here: the sidecar runs in EVERY app pod, and the generated
client brings its API and model modules, requests, oauthlib, dateutil and websocket-client: about 7 MiB of
RSS and 0.2 s of start-up in each pod (docs/benchmarks.md, "Cost per pod"), for a process that only lists
and watches EndpointSlices. `KubeClient` (agent/kube/client.py) speaks REST over either transport; this one
is used whenever the credentials are of a kind it implements, the generated client otherwise
(agent/kube/generated.py), so an exotic kubeconfig keeps working exactly as before.

What this transport implements, as strictly as the generated client does:

- in cluster: `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`, the service account's CA and
  token files; the token is re-read once a minute (the kubelet rotates bound tokens), as the generated
  client's in-cluster loader does;
- a kubeconfig (one file) whose context names a cluster with `server`, `certificate-authority` or
  `certificate-authority-data`, optionally `tls-server-name`, and a user with `token` or `tokenFile`
  (re-read once a minute too) and/or `client-certificate` + `client-key` files.

TLS is always verified (against the given CA, else the system's), and the host name too. Anything else
(`insecure-skip-tls-verify`, `proxy-url`, exec and auth-provider plugins, basic auth, inline client
certificates, a multi-file $KUBECONFIG) makes `load_credentials` answer None: the caller then uses the
generated client. Tokens are registered with agent.logs, so they are redacted from any log line.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import urllib3
import yaml

from agent.errors import ConfigError
from agent.logs import register_secret

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TOKEN_REREAD_SECONDS = 60.0  # the generated client's in-cluster refresh period
# Keys a kubeconfig may carry that this transport does not implement: their presence means "use the
# generated client" (never "ignore them").
_UNSUPPORTED_CLUSTER_KEYS = ("insecure-skip-tls-verify", "proxy-url")
_UNSUPPORTED_USER_KEYS = ("exec", "auth-provider", "username", "password", "client-certificate-data",
                          "client-key-data", "as", "as-groups", "as-user-extra")


@dataclass(frozen=True)
class Credentials:
    """Where the API is and how to prove who we are; file paths are read when used."""

    server: str
    ca_file: Path | None = None
    ca_data: str | None = None  # PEM
    tls_server_name: str | None = None
    token: str | None = None
    token_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


def _join_host_port(host: str, port: str) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def in_cluster_credentials(environ: Mapping[str, str] = os.environ, sa_dir: Path = SA_DIR) -> Credentials:
    host, port = environ.get("KUBERNETES_SERVICE_HOST", ""), environ.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        raise ConfigError("cannot load Kubernetes credentials: KUBERNETES_SERVICE_HOST/PORT are not set")
    token, ca = sa_dir / "token", sa_dir / "ca.crt"
    for path, what in ((token, "service account token"), (ca, "service account CA")):
        if not path.is_file() or path.stat().st_size == 0:
            raise ConfigError(f"cannot load Kubernetes credentials: the {what} {path} is missing or empty")
    return Credentials(server=f"https://{_join_host_port(host, port)}", ca_file=ca, token_file=token)


def _named(items: Any, name: str, kind: str, where: Path) -> dict[str, Any]:
    for item in items or []:
        if isinstance(item, dict) and item.get("name") == name and isinstance(item.get(kind), dict):
            return item[kind]  # type: ignore[no-any-return]
    raise ConfigError(f"cannot load Kubernetes credentials: {where} has no {kind} named {name!r}")


def _read_kubeconfig(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot load Kubernetes credentials: cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError:
        raise ConfigError(f"cannot load Kubernetes credentials: {path} is not valid YAML") from None
    if not isinstance(data, dict):
        raise ConfigError(f"cannot load Kubernetes credentials: {path} is not a kubeconfig")
    return data


def kubeconfig_context(path: Path, context: str | None = None) -> dict[str, Any]:
    """The context entry (cluster, user, namespace) `context` or the file's current-context names."""
    return _context(_read_kubeconfig(path), path, context)


def _context(data: dict[str, Any], path: Path, context: str | None) -> dict[str, Any]:
    name = context or data.get("current-context")
    if not name:
        raise ConfigError(f"cannot load Kubernetes credentials: {path} has no current-context")
    return _named(data.get("contexts"), str(name), "context", path)


def kubeconfig_credentials(path: Path, context: str | None = None) -> Credentials | None:
    """Credentials from one kubeconfig file, or None if it uses what only the generated client implements."""
    data = _read_kubeconfig(path)
    ctx = _context(data, path, context)
    cluster = _named(data.get("clusters"), str(ctx.get("cluster")), "cluster", path)
    user = _named(data.get("users"), str(ctx.get("user")), "user", path) if ctx.get("user") else {}
    if any(k in cluster for k in _UNSUPPORTED_CLUSTER_KEYS) or any(k in user for k in _UNSUPPORTED_USER_KEYS):
        return None
    server = str(cluster.get("server") or "").rstrip("/")
    if not server.startswith(("https://", "http://")):
        raise ConfigError(f"cannot load Kubernetes credentials: {path}: cluster server {server!r} is not a URL")
    base = path.resolve().parent

    def file(value: Any) -> Path | None:
        return None if not value else (base / str(value) if not Path(str(value)).is_absolute() else Path(str(value)))

    ca_data = None
    if cluster.get("certificate-authority-data"):
        try:
            ca_data = base64.b64decode(str(cluster["certificate-authority-data"]), validate=True).decode("ascii")
        except (ValueError, UnicodeDecodeError):
            raise ConfigError(f"cannot load Kubernetes credentials: {path}: certificate-authority-data is not "
                              f"base64 PEM") from None
    cert, key = file(user.get("client-certificate")), file(user.get("client-key"))
    if (cert is None) != (key is None):
        raise ConfigError(f"cannot load Kubernetes credentials: {path}: client-certificate and client-key go "
                          f"together")
    token = str(user["token"]).strip() if user.get("token") else None
    if token:
        register_secret(token)
    if (token or user.get("tokenFile")) and server.startswith("http://") and not _is_loopback(server):
        # A bearer token over plain HTTP can be read by anyone on the path; only a local apiserver may take one.
        raise ConfigError(f"cannot load Kubernetes credentials: {path}: refusing to send a bearer token to {server} "
                          f"over plain HTTP; use https:// (plain HTTP is allowed only to a loopback address)")
    return Credentials(server=server, ca_file=file(cluster.get("certificate-authority")), ca_data=ca_data,
                       tls_server_name=cluster.get("tls-server-name") or None, token=token,
                       token_file=file(user.get("tokenFile")) if not token else None, cert_file=cert, key_file=key)


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Token:
    """A bearer token, from the config or from a file re-read once a minute (rotated tokens)."""

    def __init__(self, credentials: Credentials, clock: Callable[[], float]) -> None:
        self._fixed = credentials.token
        self._file = credentials.token_file
        self._clock = clock
        self._lock = threading.Lock()
        self._value: str | None = None
        self._read_at = -TOKEN_REREAD_SECONDS
        if self._file is not None:
            self.value()  # a missing or empty file is a start-up error, not the first request's

    def value(self) -> str | None:
        if self._file is None:
            return self._fixed
        with self._lock:
            now = self._clock()
            if self._value is None or now - self._read_at >= TOKEN_REREAD_SECONDS:
                try:
                    text = self._file.read_text(encoding="utf-8").strip()
                except OSError as exc:
                    if self._value is None:
                        raise ConfigError(f"cannot read the Kubernetes token file {self._file}: "
                                          f"{exc.strerror}") from None
                    text = self._value  # keep the last good token; the next request tries again
                if not text:
                    if self._value is None:
                        raise ConfigError(f"the Kubernetes token file {self._file} is empty")
                    text = self._value
                register_secret(text, slot=f"kube-token:{self._file}")
                self._value, self._read_at = text, now
            return self._value


class RestTransport:
    """Requests to one API server over a urllib3 pool: TLS verified, our bearer token, no retries."""

    def __init__(self, credentials: Credentials, clock: Callable[[], float] = time.monotonic) -> None:
        self.server = credentials.server
        self._token = _Token(credentials, clock)
        pool_args: dict[str, Any] = {
            # Retries are KubeClient's callers' (with backoff and a stop signal), as with the generated client.
            "retries": False,
            "maxsize": (os.cpu_count() or 1) * 5,  # the generated client's default pool size
        }
        if self.server.startswith("https://"):
            pool_args.update(cert_reqs=ssl.CERT_REQUIRED,
                             ca_certs=str(credentials.ca_file) if credentials.ca_file else None,
                             ca_cert_data=credentials.ca_data,
                             cert_file=str(credentials.cert_file) if credentials.cert_file else None,
                             key_file=str(credentials.key_file) if credentials.key_file else None)
            if credentials.tls_server_name:
                pool_args["server_hostname"] = credentials.tls_server_name
        self._pool = urllib3.PoolManager(**pool_args)

    def send_request(self, method: str, path: str, query: list[tuple[str, Any]], headers: dict[str, str],
                     body: Any, timeout: float | tuple[float, float]) -> urllib3.BaseHTTPResponse:
        """One request; the response body is not read yet (a watch streams it)."""
        url = self.server + path
        if query:
            url += "?" + "&".join(f"{k}={quote(str(v).lower() if isinstance(v, bool) else str(v))}" for k, v in query)
        headers = dict(headers)
        token = self._token.value()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = body if body is None or isinstance(body, (str, bytes)) else json_bytes(body)
        limit = urllib3.Timeout(total=timeout) if isinstance(timeout, (int, float)) else \
            urllib3.Timeout(connect=timeout[0], read=timeout[1])
        return self._pool.request(method, url, body=data, headers=headers, timeout=limit, preload_content=False,
                                  redirect=False)

    def close(self) -> None:
        self._pool.clear()


def json_bytes(body: Any) -> bytes:
    # JSON is valid YAML, so apply-patch+yaml bodies are sent as JSON too (as the generated client does).
    return json.dumps(body).encode("utf-8")
