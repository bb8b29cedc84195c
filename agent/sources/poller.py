"""`Poller`: a `ModelArtsSource` on its own thread, as a `Source` (run's one poller, each controller group's).

The source's loop already survives whatever a poll raises; `run_forever` around it also restarts the
loop itself after a bounded backoff, so only what escapes `except Exception` ends the thread, and
then `alive()` says so (/readyz 503, `modelarts_agent_poller_alive` 0).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from agent.loops import FailureLog, run_forever
from agent.sources.modelarts import ModelArtsSource

log = logging.getLogger(__name__)


class Poller:
    kind = "modelarts"

    def __init__(self, source: ModelArtsSource, stop: threading.Event, name: str = "modelarts",
                 description: str = "the ModelArts poller", join_seconds: float = 10.0) -> None:
        self.source = source
        self.name = name
        self.description = description
        self._stop = stop  # the event `source` and its client were built with
        self._join = join_seconds
        self._failures = FailureLog(log, description)
        self.thread = threading.Thread(target=self._run, name=f"source-{name}".replace("/", "-"), daemon=True)

    def _run(self) -> None:
        run_forever(self.source.run, self._stop, self._failures)

    def start(self) -> Poller:
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(self._join)

    def alive(self) -> bool:
        return self.thread.is_alive()

    @property
    def last_error(self) -> str | None:
        return self._failures.last  # the loop's own failures; a poll's are its service's sync error

    def status(self) -> dict[str, Any]:
        turn = self.source.last_turn
        return {"name": self.name, "kind": self.kind, "alive": self.alive(), "last_error": self.last_error,
                "last_turn_age_seconds": None if turn is None else round(time.monotonic() - turn, 1)}
