"""`EmulatorAdmin`: a typed, requests-based wrapper over every admin route (see admin.py)."""

from __future__ import annotations

from typing import Any

import requests

from modelarts_emulator.config import LatencyConfig, ServiceConfig, StreamConfig
from modelarts_emulator.instances import InstanceInfo
from modelarts_emulator.throttle import CallRecord


class EmulatorAdminError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"emulator admin: HTTP {status}: {message}")
        self.status = status
        self.message = message


class EmulatorAdmin:
    def __init__(self, admin_url: str, timeout: float = 30.0) -> None:
        self.admin_url = admin_url.rstrip("/")
        self.timeout = timeout
        self._session = requests.Session()
        self._session.trust_env = False  # never send loopback admin calls through a proxy

    def close(self) -> None:
        self._session.close()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None,
              params: dict[str, Any] | None = None) -> Any:
        params = {k: v for k, v in (params or {}).items() if v is not None}
        resp = self._session.request(
            method, self.admin_url + path, json=body, params=params, timeout=self.timeout
        )
        try:
            data = resp.json()
        except ValueError:
            data = {"error": resp.text}
        if resp.status_code >= 400:
            raise EmulatorAdminError(resp.status_code, str(data.get("error", data)))
        return data

    # --- state and services ---------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/admin/state")
        return result

    def now(self) -> float:
        """The emulator clock (wall time plus the admin-set skew)."""
        return float(self.state()["clock"]["now"])

    def add_service(self, service: ServiceConfig | dict[str, Any]) -> dict[str, Any]:
        body = (
            service.model_dump(mode="json", by_alias=True, exclude_none=True)
            if isinstance(service, ServiceConfig) else service
        )
        result: dict[str, Any] = self._call("POST", "/admin/services", body)
        return result

    def remove_service(self, service_id: str) -> None:
        self._call("DELETE", f"/admin/services/{service_id}")

    def scale(self, service_id: str, n: int, wait: bool = False) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            "POST", f"/admin/services/{service_id}/scale", {"instances": n, "wait": wait}
        )
        return result

    def set_status(self, service_id: str, status: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", f"/admin/services/{service_id}/status", {"status": status})
        return result

    # --- instances ------------------------------------------------------------------------

    def instances(self, service_id: str | None = None) -> list[InstanceInfo]:
        data = self._call("GET", "/admin/instances", params={"service_id": service_id})
        return [InstanceInfo.model_validate(i) for i in data["instances"]]

    def instance_stats(self, service_id: str | None = None) -> list[InstanceInfo]:
        """Like `instances`, plus retired (scaled-in / removed) ones, whose counters stay readable."""
        data = self._call("GET", "/admin/instances/stats", params={"service_id": service_id})
        return [InstanceInfo.model_validate(i) for i in data["instances"]]

    def instance(self, instance_id: str) -> InstanceInfo:
        for info in self.instance_stats():
            if info.instance_id == instance_id:
                return info
        raise EmulatorAdminError(404, f"no instance {instance_id!r}")

    def _action(self, instance_id: str, action: str, body: dict[str, Any] | None = None) -> InstanceInfo:
        return InstanceInfo.model_validate(self._call("POST", f"/admin/instances/{instance_id}/{action}", body or {}))

    def kill(self, instance_id: str) -> InstanceInfo:
        return self._action(instance_id, "kill")

    def revive(self, instance_id: str) -> InstanceInfo:
        return self._action(instance_id, "revive")

    def set_healthy(self, instance_id: str, healthy: bool) -> InstanceInfo:
        return self._action(instance_id, "healthy" if healthy else "unhealthy")

    def remove(self, instance_id: str, wait: bool = False) -> InstanceInfo:
        return self._action(instance_id, "remove", {"wait": wait})

    def set_latency(
        self, instance_id: str, base_ms: float, jitter_ms: float = 0.0, distribution: str = "exponential",
        sigma: float = 0.5,
    ) -> InstanceInfo:
        latency = LatencyConfig.model_validate(
            {"base_ms": base_ms, "jitter_ms": jitter_ms, "distribution": distribution, "sigma": sigma}
        )
        return self._action(instance_id, "latency", latency.model_dump())

    def set_error_rate(self, instance_id: str, error_rate: float) -> InstanceInfo:
        return self._action(instance_id, "error_rate", {"error_rate": error_rate})

    def set_stream(self, instance_id: str, **fields: Any) -> InstanceInfo:
        """Token stream settings (StreamConfig fields: tokens, first_token_ms, interval_ms, reset_after)."""
        return self._action(instance_id, "stream", StreamConfig.model_validate(fields).model_dump())

    # --- faults ---------------------------------------------------------------------------

    def inject_fault(
        self, kind: str, service_id: str | None = None, count: int | None = None,
        duration_seconds: float | None = None, **params: Any,
    ) -> dict[str, Any]:
        """Arm a fault (kinds and params: faults.FaultSpec); returns it, with its `fault_id`."""
        body = {"kind": kind, "service_id": service_id, "count": count, "duration_seconds": duration_seconds}
        body = {k: v for k, v in body.items() if v is not None} | params
        result: dict[str, Any] = self._call("POST", "/admin/faults", body)
        return result

    def faults(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/admin/faults")["faults"]
        return result

    def clear_faults(self, service_id: str | None = None) -> int:
        return int(self._call("DELETE", "/admin/faults", params={"service_id": service_id})["cleared"])

    def clear_fault(self, fault_id: int) -> int:
        return int(self._call("DELETE", f"/admin/faults/{fault_id}")["cleared"])

    # --- calls, limits, IAM, clock --------------------------------------------------------

    def calls(self, since: float | None = None, after: int | None = None, api: str | None = None) -> list[CallRecord]:
        data = self._call("GET", "/admin/calls", params={"since": since, "after": after, "api": api})
        return [CallRecord.model_validate(c) for c in data["calls"]]

    def reset_calls(self) -> int:
        return int(self._call("POST", "/admin/reset_calls")["cleared"])

    def set_limits(self, **limits: Any) -> dict[str, Any]:
        """Change any LimitsConfig field; always restarts the rate windows (`set_limits()` resets budgets)."""
        result: dict[str, Any] = self._call("POST", "/admin/limits", limits)
        return result

    def revoke_tokens(self) -> int:
        return int(self._call("POST", "/admin/iam/revoke_tokens")["revoked"])

    def iam_down(self, down: bool = True) -> None:
        self._call("POST", "/admin/iam/down", {"down": down})

    def set_clock_skew(self, seconds: float) -> float:
        """Move the emulator clock `seconds` away from wall time; returns the emulator's now."""
        return float(self._call("POST", "/admin/clock", {"skew_seconds": seconds})["now"])
