"""The agent's admin HTTP endpoint: /healthz, /readyz, /metrics and /status (JSON). Loopback by default."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agent.metrics import REGISTRY

log = logging.getLogger(__name__)

StatusProvider = Callable[[], dict[str, Any]]
ReadyProvider = Callable[[], bool]


class AdminServer:
    def __init__(self, address: str, port: int, status: StatusProvider, ready: ReadyProvider,
                 not_ready_reason: Callable[[], str] | None = None,
                 before_scrape: Callable[[], None] | None = None) -> None:
        status_fn, ready_fn = status, ready
        reason_fn = not_ready_reason or (lambda: "no sync yet")

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    self._send(200, "text/plain", b"ok\n")
                elif path == "/readyz":
                    ok = ready_fn()
                    body = b"ready\n" if ok else f"not ready: {reason_fn()}\n".encode()
                    self._send(200 if ok else 503, "text/plain", body)
                elif path == "/metrics":
                    if before_scrape is not None:
                        before_scrape()  # values computed from the clock (staleness) are current
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY))
                elif path == "/status":
                    body = json.dumps(status_fn(), indent=2, default=str).encode()
                    self._send(200, "application/json", body)
                else:
                    self._send(404, "text/plain", b"not found\n")

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer((address, port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.address = address
        self._thread = threading.Thread(target=self._server.serve_forever, name="admin-http", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    def start(self) -> None:
        self._thread.start()
        log.info("admin endpoint listening", extra={"url": self.url})

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
