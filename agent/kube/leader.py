"""Leader election on a coordination.k8s.io Lease, with the timing rules of client-go.

Why not `kubernetes.leaderelection`: its LeaseLock talks through the global default client, its
requests have no timeouts (a hung renew would keep a deposed leader "leading"), and it cannot be
stopped or re-entered after losing the lease. What this module guarantees instead:

- **A leader stops before anyone can take over.** Each successful renew started at time `t`
  extends this replica's deadline to `t + renew_deadline`; `is_leader()` is False from then on,
  whatever the renew loop is doing. A follower takes over only after it has seen the same Lease
  record unchanged for `lease_duration` (> renew_deadline) on its own clock, and it first saw
  that record after the renew request started. So the old leader's deadline always passes
  first, and every renew request's timeout ends before its deadline.
- **Hand-over within the lease duration.** Followers watch the Lease, so they see the last
  renewal at once and try to acquire exactly when it expires (a GET right then confirms; the
  watch only shortens the wait and is never trusted for safety). A released Lease (graceful
  shutdown) is taken at once.
- Acquisition and renewal are optimistic-concurrency updates (resourceVersion), so two
  candidates can never both win.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.errors import ConfigError
from agent.kube.client import KubeApiError, KubeClient, collection_path, now_rfc3339, object_path
from agent.kube.metrics import LEADER, LEADER_TRANSITIONS
from agent.kube.watch import Objects, Reflector
from agent.loops import FailureLog, run_forever

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseConfig:
    namespace: str
    name: str
    identity: str
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not self.identity:
            raise ConfigError("the leader-election identity must not be empty")
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ConfigError(
                f"leader election needs 0 < retry period ({self.retry_period:g}s) < renew deadline "
                f"({self.renew_deadline:g}s) < lease duration ({self.lease_duration:g}s)")

    @classmethod
    def derived(cls, namespace: str, name: str, identity: str, lease_duration: float = 15.0,
                renew_deadline: float | None = None, retry_period: float | None = None) -> LeaseConfig:
        """client-go's ratios (15 s / 10 s / 2 s) for any lease duration."""
        deadline = renew_deadline if renew_deadline is not None else lease_duration * 2 / 3
        retry = retry_period if retry_period is not None else max(0.2, min(2.0, deadline / 5))
        return cls(namespace, name, identity, lease_duration, deadline, retry)


@dataclass
class _Observed:
    resource_version: str = ""
    holder: str = ""
    duration: float = 0.0
    at: float = 0.0  # monotonic time we first saw this record


class LeaderElector:
    def __init__(self, kube: KubeClient, config: LeaseConfig, on_started: Callable[[], None],
                 on_stopped: Callable[[], None], stop: threading.Event) -> None:
        self._kube = kube
        self.config = config
        self._on_started = on_started
        self._on_stopped = on_stopped
        self._stop = stop
        self._cond = threading.Condition()
        self._observed = _Observed()
        self._lease: dict[str, Any] | None = None  # our last written Lease, for the next renew
        self._leading = False
        self._deadline = 0.0
        self._failures = FailureLog(log, "leader election")
        self.thread = threading.Thread(target=self.run, name="leader-election", daemon=True)
        self._watch = Reflector(kube, collection_path("Lease", config.namespace), "lease", self._on_watch, stop,
                                field_selector=f"metadata.name={config.name}")

    # -- for everybody else ------------------------------------------------------------------------

    def is_leader(self) -> bool:
        """True only while this replica may act as leader (checked before every ModelArts call)."""
        with self._cond:
            return self._leading and time.monotonic() < self._deadline

    def leader_identity(self) -> str | None:
        with self._cond:
            return self._observed.holder or None

    def interrupt(self) -> None:
        """Wake a waiting campaign so it notices the stop signal now."""
        with self._cond:
            self._cond.notify_all()

    def start(self) -> LeaderElector:
        self._watch.start()
        self.thread.start()
        return self

    # -- the loop ----------------------------------------------------------------------------------

    def run(self) -> None:
        LEADER.set(0)
        run_forever(self._elect, self._stop, self._failures, base=self.config.retry_period,
                    cap=max(self.config.retry_period, self.config.lease_duration))

    def _elect(self) -> None:
        # _lead steps down in its `finally`, so an exception anywhere here leaves this replica a follower.
        while not self._stop.is_set():
            if self._campaign():
                self._lead()

    def _campaign(self) -> bool:
        """Block until this replica acquired the Lease (True) or the stop signal (False)."""
        cfg = self.config
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                lease = self._kube.get(object_path("Lease", cfg.namespace, cfg.name), timeout=cfg.retry_period)
                if lease is None:
                    if self._create(started):
                        return True
                    continue
                self._observe(lease)
                with self._cond:
                    observed = self._observed
                    expires = observed.at + observed.duration
                if observed.holder in ("", cfg.identity) or time.monotonic() >= expires:
                    if self._take(lease, started):
                        return True
                    continue
            except KubeApiError as exc:
                log.warning("leader election: cannot read the lease: %s", exc, extra={"lease": cfg.name})
                self._stop.wait(cfg.retry_period)
                continue
            # Someone else leads: sleep until their lease would expire, or until the watch sees a change.
            self._wait_for_change(expires)
        return False

    def _wait_for_change(self, until: float) -> None:
        with self._cond:
            seen = self._observed.resource_version
            self._cond.wait_for(lambda: self._stop.is_set() or self._observed.resource_version != seen,
                                timeout=max(0.05, until - time.monotonic()))

    def _lead(self) -> None:
        cfg = self.config
        log.info("became the leader", extra={"identity": cfg.identity, "lease": f"{cfg.namespace}/{cfg.name}"})
        LEADER.set(1)
        LEADER_TRANSITIONS.labels("started").inc()
        try:
            self._on_started()
            while not self._stop.wait(cfg.retry_period):
                started = time.monotonic()
                remaining = self._deadline_left(started)
                if remaining <= 0:
                    log.error("could not renew the lease before the renew deadline; stepping down",
                              extra={"identity": cfg.identity})
                    break
                if not self._renew(started, remaining):
                    break
        finally:
            with self._cond:
                self._leading = False
            LEADER.set(0)
            LEADER_TRANSITIONS.labels("stopped").inc()
            self._on_stopped()
            log.info("stopped leading", extra={"identity": cfg.identity})
        if self._stop.is_set():
            self._release()

    def _deadline_left(self, now: float) -> float:
        with self._cond:
            return self._deadline - now

    # -- Lease operations --------------------------------------------------------------------------

    def _spec(self, acquire_time: str, transitions: int) -> dict[str, Any]:
        now = now_rfc3339(micro=True)
        return {"holderIdentity": self.config.identity,
                "leaseDurationSeconds": math.ceil(self.config.lease_duration),
                "acquireTime": acquire_time or now, "renewTime": now, "leaseTransitions": transitions}

    def _won(self, lease: dict[str, Any], started: float) -> None:
        with self._cond:
            self._lease = lease
            self._leading = True
            self._deadline = started + self.config.renew_deadline
        self._observe(lease)

    def _create(self, started: float) -> bool:
        cfg = self.config
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": cfg.name, "namespace": cfg.namespace}, "spec": self._spec("", 0)}
        try:
            lease = self._kube.request("POST", collection_path("Lease", cfg.namespace), body=body,
                                       timeout=cfg.retry_period)
        except KubeApiError as exc:
            if exc.status != 409:
                log.warning("leader election: cannot create the lease: %s", exc)
                self._stop.wait(cfg.retry_period)
            return False
        self._won(lease, started)
        return True

    def _take(self, lease: dict[str, Any], started: float) -> bool:
        spec = lease.get("spec") or {}
        mine = spec.get("holderIdentity") == self.config.identity
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if mine else 1)
        lease = {**lease, "spec": self._spec(spec.get("acquireTime", "") if mine else "", transitions)}
        try:
            written = self._kube.request("PUT", object_path("Lease", self.config.namespace, self.config.name),
                                         body=lease, timeout=self.config.retry_period)
        except KubeApiError as exc:
            if exc.status != 409:  # 409: another candidate won the race
                log.warning("leader election: cannot take the lease: %s", exc)
                self._stop.wait(self.config.retry_period)
            return False
        self._won(written, started)
        return True

    def _renew(self, started: float, remaining: float) -> bool:
        """One renewal try; False if the lease is lost for sure (someone else holds it)."""
        cfg = self.config
        assert self._lease is not None
        spec = self._lease.get("spec") or {}
        body = {**self._lease, "spec": self._spec(spec.get("acquireTime", ""), int(spec.get("leaseTransitions") or 0))}
        # The request must end before our deadline, whatever the network does.
        timeout = max(0.05, min(remaining, cfg.retry_period))
        try:
            written = self._kube.request("PUT", object_path("Lease", cfg.namespace, cfg.name), body=body,
                                         timeout=timeout)
        except KubeApiError as exc:
            if exc.status == 409:
                current = None
                with contextlib.suppress(KubeApiError):
                    current = self._kube.get(object_path("Lease", cfg.namespace, cfg.name), timeout=timeout)
                holder = ((current or {}).get("spec") or {}).get("holderIdentity")
                if current is not None and holder != cfg.identity:
                    log.warning("the lease was taken over", extra={"holder": holder})
                    return False
                if current is not None:
                    with self._cond:
                        self._lease = current
            else:
                log.warning("lease renewal failed, retrying until the renew deadline: %s", exc)
            return True
        with self._cond:
            self._lease = written
            self._deadline = started + cfg.renew_deadline
        self._observe(written)
        return True

    def _release(self) -> None:
        """On shutdown: hand the lease over at once (our sources are already stopped)."""
        cfg = self.config
        with self._cond:
            lease = self._lease
        if lease is None:
            return
        spec = {**(lease.get("spec") or {}), "holderIdentity": "", "leaseDurationSeconds": 1,
                "renewTime": now_rfc3339(micro=True)}
        try:
            self._kube.request("PUT", object_path("Lease", cfg.namespace, cfg.name), body={**lease, "spec": spec},
                               timeout=2.0)
            log.info("released the lease", extra={"lease": f"{cfg.namespace}/{cfg.name}"})
        except KubeApiError as exc:
            log.warning("could not release the lease (it will expire): %s", exc)

    # -- observing the Lease -----------------------------------------------------------------------

    def _on_watch(self, objects: Objects) -> None:
        for lease in objects.values():
            self._observe(lease)

    def _observe(self, lease: dict[str, Any]) -> None:
        meta, spec = lease.get("metadata") or {}, lease.get("spec") or {}
        version = str(meta.get("resourceVersion") or "")
        with self._cond:
            # Any other version counts as a change seen now: that can only delay a take-over, never hasten it.
            if version == self._observed.resource_version:
                return
            self._observed = _Observed(resource_version=version, holder=str(spec.get("holderIdentity") or ""),
                                       duration=float(spec.get("leaseDurationSeconds") or self.config.lease_duration),
                                       at=time.monotonic())
            self._cond.notify_all()
