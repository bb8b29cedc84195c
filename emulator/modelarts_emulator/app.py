"""`Emulator`: IAM, ModelArts API, admin API and all instances on one asyncio loop.

In-process use (tests, the demo) runs the loop in a background thread:

    with Emulator(EmulatorConfig(services=[ServiceConfig(name="svc", instances=2)])) as emu:
        emu.admin.kill(...)          # EmulatorAdmin over the admin HTTP API
        requests.post(emu.iam_url + "/v3/auth/tokens", json=...)

`run_forever()` runs in the foreground instead (the CLI), until SIGINT or SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

from modelarts_emulator.admin import AdminApi, EmulatorParts
from modelarts_emulator.client import EmulatorAdmin
from modelarts_emulator.config import EmulatorConfig
from modelarts_emulator.faults import FaultBoard
from modelarts_emulator.iam import Directory, IamApi, TokenStore
from modelarts_emulator.instances import Fleet, FleetError, HttpListener
from modelarts_emulator.modelarts_api import ModelArtsApi
from modelarts_emulator.throttle import CallLog, EmulatorClock, RateLimiter
from modelarts_emulator.tls import CertificateAuthority

log = logging.getLogger("modelarts_emulator")


class EmulatorError(RuntimeError):
    pass


def _url(scheme: str, host: str, port: int) -> str:
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


class Emulator:
    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config if config is not None else EmulatorConfig()
        self._parts: EmulatorParts | None = None
        self._listeners: list[HttpListener] = []
        self._tls_dir: Path | None = None
        self._own_tls_dir = False
        self._urls: dict[str, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._admin: EmulatorAdmin | None = None

    # --- public properties ------------------------------------------------------------

    def _url_of(self, name: str) -> str:
        try:
            return self._urls[name]
        except KeyError:
            raise EmulatorError("the emulator is not running") from None

    @property
    def iam_url(self) -> str:
        return self._url_of("iam_url")

    @property
    def modelarts_url(self) -> str:
        return self._url_of("modelarts_url")

    @property
    def admin_url(self) -> str:
        return self._url_of("admin_url")

    @property
    def ca_pem_path(self) -> str:
        if self._parts is None:
            raise EmulatorError("the emulator is not running")
        return self._parts.ca_pem_path

    @property
    def admin(self) -> EmulatorAdmin:
        if self._admin is None:
            self._admin = EmulatorAdmin(self.admin_url)
        return self._admin

    def ready_info(self) -> dict[str, Any]:
        """What the CLI prints once listening; never carries a password or SK."""
        assert self._parts is not None
        return {
            **self._urls,
            "ca_pem_path": self.ca_pem_path,
            "services": [
                {"name": s.config.name, "service_id": s.service_id, "project_id": s.config.project_id}
                for s in self._parts.fleet.services.values()
            ],
            "credentials_hint": "demo user is demo-user / password in the scenario",
        }

    # --- async core ---------------------------------------------------------------------

    async def start_async(self) -> None:
        """Start everything on the running loop; on failure nothing is left listening."""
        cfg = self.config
        if cfg.tls_dir is None:
            self._tls_dir, self._own_tls_dir = Path(tempfile.mkdtemp(prefix="modelarts-emulator-")), True
        else:
            self._tls_dir, self._own_tls_dir = cfg.tls_dir, False
        try:
            await self._start_parts(cfg, self._tls_dir)
        except BaseException:
            await self.stop_async()
            raise

    async def _start_parts(self, cfg: EmulatorConfig, tls_dir: Path) -> None:
        ca = CertificateAuthority(tls_dir)
        clock = EmulatorClock()
        calls = CallLog()
        directory = Directory(cfg.users)
        tokens = TokenStore(clock, cfg.token_ttl_seconds)
        limiter = RateLimiter(cfg.limits)
        faults = FaultBoard()
        fleet = Fleet(cfg, ca)
        iam = IamApi(directory, tokens, clock, calls, faults)
        parts = EmulatorParts(cfg, clock, calls, directory, tokens, limiter, faults, fleet, iam, str(ca.ca_pem_path))
        self._parts = parts
        modelarts = ModelArtsApi(directory, tokens, clock, calls, limiter, faults, fleet)
        api_ssl = ca.server_context("api", [cfg.host]) if cfg.api_tls else None
        scheme = "https" if cfg.api_tls else "http"

        if cfg.iam_port and cfg.iam_port == cfg.modelarts_port:
            shared = web.Application()
            iam.add_routes(shared)
            modelarts.add_routes(shared)
            port = await self._listen(shared, cfg.modelarts_port, api_ssl)
            iam_port = modelarts_port = port
        else:
            iam_port = await self._listen(iam.make_app(), cfg.iam_port, api_ssl)
            modelarts_port = await self._listen(modelarts.make_app(), cfg.modelarts_port, api_ssl)
        admin_port = await self._listen(AdminApi(parts).make_app(), cfg.admin_port, None)
        self._urls = {
            "iam_url": _url(scheme, cfg.host, iam_port),
            "modelarts_url": _url(scheme, cfg.host, modelarts_port),
            "admin_url": _url("http", cfg.host, admin_port),
        }
        parts.urls = dict(self._urls)
        for svc in cfg.services:
            try:
                await fleet.add_service(svc.model_copy(deep=True))
            except FleetError as exc:
                raise EmulatorError(f"service {svc.name}: {exc}") from None

    async def _listen(self, app: web.Application, port: int, ssl_context: Any) -> int:
        listener = HttpListener(app, self.config.host, port, ssl_context)
        try:
            bound = await listener.start()
        except OSError as exc:
            raise EmulatorError(f"cannot listen on {self.config.host}:{port}: {exc.strerror}") from None
        self._listeners.append(listener)
        return bound

    async def stop_async(self) -> None:
        """Close every listener and connection; safe to call twice."""
        if self._parts is not None:
            await self._parts.fleet.stop()
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            await listener.kill()
        self._urls = {}
        if self._own_tls_dir and self._tls_dir is not None:
            shutil.rmtree(self._tls_dir, ignore_errors=True)
            self._tls_dir = None

    # --- background thread --------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> Emulator:
        """Run in a background thread; returns once everything is listening."""
        if self._thread is not None:
            raise EmulatorError("the emulator is already running")
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start_async())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop_async())
            _cancel_leftovers(loop)
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=main, name="modelarts-emulator", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise EmulatorError("the emulator did not start in time")
        if failure:
            self._thread.join()
            self._thread = self._loop = None
            raise failure[0]
        return self

    def stop(self, timeout: float = 30.0) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        self._thread = self._loop = None
        if self._admin is not None:
            self._admin.close()
            self._admin = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- foreground -----------------------------------------------------------------------

    def run_forever(self, on_ready: Callable[[Emulator], None] | None = None) -> None:
        """Serve until SIGINT/SIGTERM, then stop cleanly. `on_ready` runs once all is listening."""
        asyncio.run(self._serve(on_ready))

    async def _serve(self, on_ready: Callable[[Emulator], None] | None) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start_async()
            if on_ready is not None:
                on_ready(self)
            await stop.wait()
        finally:
            await self.stop_async()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    with contextlib.suppress(Exception):
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
