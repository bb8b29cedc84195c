"""SIGTERM / SIGINT -> an orderly stop, and the main thread's serve-until-stopped loop."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Protocol


class Servable(Protocol):
    stop_event: threading.Event

    def start(self) -> None: ...

    def wait(self) -> None: ...

    def stop(self) -> None: ...


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT only set `stop`: the main thread's wait ends and everything stops in order."""

    def _on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)


def serve(runtime: Servable) -> int:
    """Run until a signal (or anything else) sets the runtime's stop event; the exit status."""
    stop_on_signals(runtime.stop_event)
    runtime.start()
    runtime.wait()
    runtime.stop()
    return 0
