"""The controller: ModelArtsService CRs in, Services + EndpointSlices + CR status out, leader-elected.

Threads of one replica:

- `watch-modelartsservices`: a reflector over the CRs (cluster-wide or one namespace). Every
  replica runs it, leader or not, so a new leader starts from a warm cache.
- `leader-election` (+ `watch-lease`): campaigns for the Lease; see agent/kube/leader.py.
- while leading, a `Pipeline` (agent/controller/pipeline.py): reconcile, pollers, sink,
  status writer. It is created in `started leading` and halted in `stopped leading`; halting is
  lock-free and happens before anything else, and the pipeline's guard re-checks the lease
  deadline before every request anyway.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.controller.pipeline import Pipeline, PipelineSettings
from agent.kube.client import EventRecorder, KubeClient, collection_path
from agent.kube.leader import LeaderElector, LeaseConfig
from agent.kube.watch import Reflector

log = logging.getLogger(__name__)

COMPONENT = "modelarts-agent"


@dataclass(frozen=True)
class ControllerSettings:
    lease: LeaseConfig
    namespace: str | None = None  # watch CRs in this namespace only; None: cluster-wide
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)


class Controller:
    def __init__(self, kube: KubeClient, settings: ControllerSettings) -> None:
        self._kube = kube
        self.settings = settings
        self.stop = threading.Event()
        self._events = EventRecorder(kube, COMPONENT, settings.lease.identity)
        self._lock = threading.Lock()
        self._objects: dict[str, dict[str, Any]] = {}
        self._pipeline: Pipeline | None = None
        self._crs = Reflector(kube, collection_path("ModelArtsService", settings.namespace), "modelartsservices",
                              self._on_crs, self.stop)
        self.elector = LeaderElector(kube, settings.lease, self._started_leading, self._stopped_leading, self.stop)
        self.started_at = time.time()

    def start(self) -> None:
        self._crs.start()
        self.elector.start()
        log.info("controller started", extra={"identity": self.settings.lease.identity,
                                               "namespace": self.settings.namespace or "(all)",
                                               "lease": f"{self.settings.lease.namespace}/{self.settings.lease.name}"})

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop polling, then release the lease so another replica takes over at once."""
        self.stop.set()
        self.elector.interrupt()
        self.elector.thread.join(timeout)
        self._stopped_leading()

    # -- callbacks -----------------------------------------------------------------------------------

    def _on_crs(self, objects: Mapping[str, dict[str, Any]]) -> None:
        # Under the lock, so that submits reach the pipeline in the order the watch saw the objects.
        with self._lock:
            self._objects = dict(objects)
            if self._pipeline is not None:
                self._pipeline.submit(objects)

    def _started_leading(self) -> None:
        # Quick on purpose: the renew loop only starts when this returns.
        pipeline = Pipeline(self._kube, self.settings.pipeline, self.elector.is_leader, self._events)
        # The current CRs go in under the lock, before any later watch event can: submitting them after
        # releasing it could overwrite a newer set with this older one (e.g. still empty, if leadership
        # came before the first list), and the pipeline would stop polling until the next CR change.
        with self._lock:
            self._pipeline = pipeline
            pipeline.submit(dict(self._objects))
        pipeline.start()

    def _stopped_leading(self) -> None:
        pipeline = self._pipeline
        if pipeline is not None:
            pipeline.halt()  # first, and without waiting for any lock
        with self._lock:
            self._pipeline = None
        if pipeline is not None:
            pipeline.close()

    # -- admin endpoint ------------------------------------------------------------------------------

    def ready(self) -> bool:
        return self._crs.synced.is_set()

    def status(self) -> dict[str, Any]:
        pipeline = self._pipeline
        with self._lock:
            names = sorted(self._objects)
        return {
            "identity": self.settings.lease.identity,
            "leader": self.elector.is_leader(),
            "leader_identity": self.elector.leader_identity(),
            "namespace": self.settings.namespace,
            "modelartsservices": names,
            "watch_error": self._crs.last_error,
            "pipeline": pipeline.describe() if pipeline is not None else None,
            "uptime_seconds": round(time.time() - self.started_at, 1),
        }
