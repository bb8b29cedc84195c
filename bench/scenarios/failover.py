"""Scenario 3, failover: one of four instances dies (SIGKILL) under steady load through the sidecar.

The dead instance stays in the endpoint list for the whole run (the platform has not noticed yet), so
what hides it is Envoy alone: retries to a different instance for idempotent requests, and outlier
detection. GET is the target; POST (not idempotent, so never retried unless it carries an
Idempotency-Key) is measured the same way for information.
"""

from __future__ import annotations

import time

import numpy as np

from bench import report
from bench.loadgen import Attack, Results, Target, Upstream
from bench.scenarios import Check, Ctx, Envoy, ScenarioResult, free_port, sidecar, snapshot

NAME = "failover"
TITLE = "3. Failover: an instance dies under load"
SERVICE_MS = 5.0


def _one_run(ctx: Ctx, envoy: Envoy, port: int, ups: list[Upstream], method: str, rate: float,
             seconds: float, kill_at: float) -> tuple[Results, float, dict[str, int]]:
    before = envoy.stats("cluster.llm.")
    target = Target(f"http://127.0.0.1:{port}/v1/infer", method=method,
                    body=b'{"prompt": "hello"}' if method == "POST" else None,
                    headers={"Content-Type": "application/json"} if method == "POST" else {})
    attack = Attack(f"failover-{method}", [target], ctx.workdir, rate=rate, duration=seconds).start()
    time.sleep(kill_at)
    killed_at = time.time()
    ups[0].kill()
    ctx.step(f"{method}: killed {ups[0].instance_id}, load goes on")
    res = attack.wait()
    after = envoy.stats("cluster.llm.")
    delta = {k.removeprefix("cluster.llm."): after[k] - before.get(k, 0) for k in after
             if any(s in k for s in ("upstream_rq_retry", "ejections_enforced_total", "upstream_cx_connect_fail",
                                     "upstream_rq_pending_failure_eject", "upstream_cx_destroy_remote_with_active_rq"))}
    return res, killed_at, {k: v for k, v in delta.items() if v}


def run(ctx: Ctx) -> ScenarioResult:
    result = ScenarioResult(NAME, TITLE)
    rate = 300.0 if ctx.quick else 500.0
    seconds = 6.0 if ctx.quick else 12.0
    kill_at = 2.0 if ctx.quick else 4.0
    methods = ["GET"] if ctx.quick else ["GET", "POST"]

    rows = []
    raw: dict[str, object] = {}
    series: dict[str, tuple[Results, float, str]] = {}
    envoy = None
    sink = config = None
    port = free_port()
    for round_index, method in enumerate(methods):
        ctx.step(f"{method}: starting 4 Go upstreams")
        ups = [ctx.track(Upstream(f"fo{round_index}-{i}", f"127.0.0.{61 + 4 * round_index + i}", ctx.workdir,
                                  service_ms=SERVICE_MS)).start() for i in range(4)]
        eps = {"llm": [(u.ip, u.port) for u in ups]}
        if envoy is None:
            envoy, sink, config = sidecar(ctx, [{"name": "llm", "listen_port": port}], eps)
        else:
            assert sink is not None and config is not None
            sink.publish(snapshot(config, eps, version=round_index + 1))
            envoy.wait_for_hosts("llm", [u.address for u in ups])
        Attack(f"warm-{method}", [Target(f"http://127.0.0.1:{port}/v1/infer")], ctx.workdir, rate=200,
               duration=1.0, per_request=False).start().wait()
        ctx.step(f"{method}: {rate:g} rps for {seconds:g} s, one instance killed at {kill_at:g} s")
        res, killed_at, stats = _one_run(ctx, envoy, port, ups, method, rate, seconds, kill_at)
        failed_mask = ~res.ok_mask
        failures = int(failed_mask.sum())  # over the whole run: requests in flight at the kill count too
        last_failure = max(0.0, float(res.sent[failed_mask].max() - killed_at)) if failures else 0.0
        dead_served = res.per_instance().get(ups[0].instance_id, 0)
        served_after = sum(1 for t, i, ok in zip(res.sent.tolist(), res.instance, res.ok_mask.tolist(), strict=True)
                           if ok and i == ups[0].instance_id and t > killed_at + 0.05)
        rows.append([method, f"{res.count}", f"{failures}", f"{last_failure:.2f} s" if failures else "0 s (none)",
                     ", ".join(f"{k}: {v}" for k, v in res.failures_by_kind().items()) or "—",
                     ", ".join(f"{k}={v}" for k, v in sorted(stats.items())) or "—"])
        raw[method] = {"sent": res.count, "failed": failures, "error_free_after_s": last_failure,
                       "failures": dict(res.failures_by_kind()), "envoy": stats, "dead_served_total": dead_served,
                       "dead_served_after_kill": served_after}
        series[method] = (res, killed_at, ups[0].instance_id)
        if method == "GET":
            result.checks.append(Check("failed idempotent requests (GET) when 1 of 4 instances dies",
                                       f"{failures} of {res.count}", "0", failures == 0,
                                       f"error-free {last_failure:.2f} s after the kill" if failures
                                       else "error-free throughout"))
            result.checks.append(Check("time until error-free service (GET)", f"{last_failure:.2f} s",
                                       "(no target)", None))
        else:
            result.checks.append(Check("failed POST requests (not idempotent, never retried)",
                                       f"{failures} of {res.count}", "(info: no target)", None,
                                       "requests in flight on the dead instance when it died"))
        for u in ups[1:]:
            u.stop()

    result.tables.append(report.table(
        f"{rate:g} rps through the sidecar for {seconds:g} s; instance killed (SIGKILL) at t={kill_at:g} s",
        ["method", "sent", "failed", "error-free after", "failures by kind", "Envoy counters during the run"],
        rows))
    result.notes.append(
        f"Instances: 4 Go upstreams (`scripts/bench/go/upstream`, {SERVICE_MS:g} ms service time) on core 0. "
        "Sidecar: Envoy (one worker, core 1) with the agent's default policy: retries on connect failure, "
        "reset, gateway error and 503, to a different host, for idempotent methods only; outlier detection. "
        "The killed instance stays listed for the whole run: this measures the data plane before discovery "
        "even notices (scenario 4 covers the agent unlisting an instance).")
    result.raw = raw

    fig, axes = report.figure(1, len(series), width=5.5 * len(series))
    axes = np.atleast_1d(axes)
    for ax, (method, (res, killed_at, dead)) in zip(axes, series.items(), strict=True):
        t0 = float(res.sent.min()) if res.count else killed_at
        edges = np.arange(0, seconds + 0.25, 0.25)
        for instance in sorted({i for i in res.instance if i}):
            mask = np.array([i == instance for i in res.instance]) & res.ok_mask
            counts, _ = np.histogram(res.sent[mask] - t0, edges)
            ax.plot(edges[:-1], counts * 4, label=instance + (" (killed)" if instance == dead else ""))
        counts, _ = np.histogram(res.sent[~res.ok_mask] - t0, edges)
        ax.bar(edges[:-1], counts * 4, width=0.25, align="edge", color="red", label="failed")
        ax.axvline(killed_at - t0, color="black", linestyle="--", label="SIGKILL")
        ax.set_xlabel("seconds")
        ax.set_ylabel("requests/s (0.25 s buckets)")
        ax.set_title(f"{method}: who served, and failures")
        ax.legend(fontsize=7)
    result.plots.append(report.save(fig, "failover.png", ctx.img_dir))
    return result
