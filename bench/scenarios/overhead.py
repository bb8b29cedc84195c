"""Scenario 1, data-plane overhead: one instance called directly vs through the sidecar Envoy.

Both arms hit the same Go upstream (no service time, no concurrency limit, so Envoy's own cost is what
shows) with the same vegeta on the same core; the sidecar arm goes through an Envoy whose config the
agent's EnvoyFileSink rendered (default service policy: least_request, retries, outlier detection).
Rounds alternate direct / sidecar so drift on the shared VM hits both arms alike.
"""

from __future__ import annotations

import numpy as np

from bench import report
from bench.loadgen import Attack, Results, Target, Upstream
from bench.scenarios import Check, Ctx, ScenarioResult, fmt_ms, free_port, proc_cpu_seconds, sidecar

NAME = "overhead"
TITLE = "1. Data-plane overhead: direct vs sidecar Envoy"
P99_TARGET_MS = 1.0  # at 1,000 rps
THROUGHPUT_TARGET = 0.80
NOISE_SPREAD = 3.0  # direct-arm p99: median over rounds / best round, beyond which the run is too noisy


def run(ctx: Ctx) -> ScenarioResult:
    result = ScenarioResult(NAME, TITLE)
    quick = ctx.quick
    rates = [1000] if quick else [200, 1000, 2000]
    rounds = 3 if quick else 6
    round_seconds = 2.0 if quick else 3.0
    max_rounds = 1 if quick else 3
    max_seconds = 2.0 if quick else 4.0
    max_workers = 32

    ctx.step("starting the Go upstream and the sidecar Envoy")
    upstream = ctx.track(Upstream("direct-0", "127.0.0.31", ctx.workdir)).start()
    port = free_port()
    envoy, _, _ = sidecar(ctx, [{"name": "llm", "listen_port": port}],
                          {"llm": [(upstream.ip, upstream.port)]})
    arms = {
        "direct": [Target(f"{upstream.url}/v1/infer")],
        "sidecar": [Target(f"http://127.0.0.1:{port}/v1/infer")],
    }

    # Warm-up: connections, Envoy's first requests, page cache.
    for arm, targets in arms.items():
        Attack(f"warm-{arm}", targets, ctx.workdir, rate=500, duration=1.0, per_request=False).start().wait()

    fixed: dict[int, dict[str, Results]] = {}
    envoy_cpu_us: dict[str, list[float]] = {}  # Envoy's CPU time per request, from /proc
    round_p99: dict[int, dict[str, list[float]]] = {}
    for rate in rates:
        parts: dict[str, list[Results]] = {"direct": [], "sidecar": []}
        for index in range(rounds):
            order = ["direct", "sidecar"] if index % 2 == 0 else ["sidecar", "direct"]
            for arm in order:
                ctx.step(f"{rate} rps, round {index + 1}/{rounds}: {arm}")
                cpu0 = proc_cpu_seconds(envoy.pid)
                res = Attack(f"{arm}-{rate}-{index}", arms[arm], ctx.workdir, rate=rate,
                             duration=round_seconds).start().wait()
                parts[arm].append(res)
                if arm == "sidecar" and res.count:
                    used = proc_cpu_seconds(envoy.pid) - cpu0
                    envoy_cpu_us.setdefault(str(rate), []).append(used / res.count * 1e6)
        fixed[rate] = {arm: Results.concat(p) for arm, p in parts.items()}
        round_p99[rate] = {arm: [r.percentile_ms(99) for r in p] for arm, p in parts.items()}

    throughput: dict[str, list[float]] = {"direct": [], "sidecar": []}
    for index in range(max_rounds):
        order = ["direct", "sidecar"] if index % 2 == 0 else ["sidecar", "direct"]
        for arm in order:
            ctx.step(f"max throughput, round {index + 1}/{max_rounds}: {arm}")
            cpu0 = proc_cpu_seconds(envoy.pid)
            res = Attack(f"max-{arm}-{index}", arms[arm], ctx.workdir, rate=0, duration=max_seconds,
                         max_workers=max_workers, per_request=False).start().wait()
            requests = int(res.summary.get("requests", 0))
            if arm == "sidecar" and requests:
                envoy_cpu_us.setdefault("max", []).append((proc_cpu_seconds(envoy.pid) - cpu0) / requests * 1e6)
            throughput[arm].append(float(res.summary.get("throughput", 0.0)))  # vegeta: successful requests/s
    retries = envoy.stats("cluster.llm.upstream_rq_retry")

    # The same comparison with an instance that is the bottleneck, as a real model is (info only).
    realistic: dict[str, float] = {}
    if not quick:
        slow = ctx.track(Upstream("realistic-0", "127.0.0.32", ctx.workdir, service_ms=10.0, concurrency=8)).start()
        port2 = free_port()
        sidecar(ctx, [{"name": "model", "listen_port": port2}], {"model": [(slow.ip, slow.port)]}, name="envoy-model")
        for arm, url in (("direct", slow.url), ("sidecar", f"http://127.0.0.1:{port2}")):
            ctx.step(f"max throughput with a 10 ms / 8-slot instance: {arm}")
            res = Attack(f"model-{arm}", [Target(f"{url}/v1/infer")], ctx.workdir, rate=0, duration=3.0,
                         max_workers=max_workers, per_request=False).start().wait()
            realistic[arm] = float(res.summary.get("throughput", 0.0))

    # --- figures ---------------------------------------------------------------------------------------------
    # On a shared VM one noisy round can own the pooled p99, so the verdict uses the median over the
    # interleaved rounds of each round's p99 (the pooled figures are in the table too).
    def med_p99(rate: int, arm: str) -> float:
        return float(np.median(round_p99[rate][arm]))

    rows = []
    raw_fixed = {}
    for rate, arms_res in fixed.items():
        d, s = arms_res["direct"], arms_res["sidecar"]
        dp, sp = d.percentiles_ms(), s.percentiles_ms()
        raw_fixed[rate] = {"direct": dp, "sidecar": sp, "direct_failed": d.failed, "sidecar_failed": s.failed,
                           "direct_rate": d.achieved_rate(), "sidecar_rate": s.achieved_rate(),
                           "requests": [d.count, s.count], "round_p99": round_p99[rate]}
        rows.append([f"{rate:,}", "p99, median of rounds", fmt_ms(med_p99(rate, "direct")),
                     fmt_ms(med_p99(rate, "sidecar")), f"{med_p99(rate, 'sidecar') - med_p99(rate, 'direct'):+.2f} ms",
                     ""])
        for q in ("p50", "p99", "p99.9"):
            rows.append([f"{rate:,}", f"{q}, pooled", fmt_ms(dp[q]), fmt_ms(sp[q]), f"{sp[q] - dp[q]:+.2f} ms",
                         f"{sp[q] / dp[q]:.2f}x" if dp[q] > 0 else "n/a"])
        rows.append([f"{rate:,}", "p99 of each round", " ".join(f"{v:.2f}" for v in round_p99[rate]["direct"]),
                     " ".join(f"{v:.2f}" for v in round_p99[rate]["sidecar"]), "", ""])
        rows.append([f"{rate:,}", "failed / sent", f"{d.failed} / {d.count}", f"{s.failed} / {s.count}", "", ""])
    result.tables.append(report.table(
        f"Latency at fixed rates (open loop, {rounds} interleaved rounds of {round_seconds:g} s per arm)",
        ["rate (rps)", "statistic", "direct", "sidecar", "added by sidecar", "ratio"], rows))

    med = {arm: float(np.median(v)) for arm, v in throughput.items()}
    ratio = med["sidecar"] / med["direct"] if med["direct"] else 0.0
    result.tables.append(report.table(
        f"Max throughput (closed loop, {max_workers} connections, {max_rounds} x {max_seconds:g} s per arm)",
        ["arm", "requests/s (each round)", "median"],
        [[arm, ", ".join(f"{v:,.0f}" for v in vals), f"{med[arm]:,.0f}"] for arm, vals in throughput.items()]))

    if envoy_cpu_us:
        cpu_text = ", ".join(f"{k if k == 'max' else k + ' rps'}: {np.median(v):.0f} µs"
                             for k, v in envoy_cpu_us.items())
        result.checks.append(Check("Envoy CPU time per request (median over rounds)", cpu_text, "(info)", None,
                                   "utime+stime of the Envoy process / requests; 1 core = 1e6 µs/s"))
    if realistic:
        kept = realistic["sidecar"] / realistic["direct"] if realistic["direct"] else 0.0
        result.checks.append(Check(
            "max throughput kept, instance with 10 ms service time and 8 slots (800 rps at most)",
            f"{kept:.0%} ({realistic['sidecar']:,.0f} vs {realistic['direct']:,.0f} rps)", "(info)", None,
            "when the instance is the bottleneck, as a model is, the proxy's cost disappears"))
    if 1000 in fixed:
        dp99, sp99 = med_p99(1000, "direct"), med_p99(1000, "sidecar")
        added = sp99 - dp99
        # The direct arm has no proxy: if its own rounds disagree by more than 3x, other work on the machine
        # owned the tail, and neither arm's p99 says anything about Envoy.
        spread = dp99 / max(1e-9, min(round_p99[1000]["direct"]))
        noisy = spread > NOISE_SPREAD
        result.checks.append(Check(
            "p99 added by the sidecar at 1,000 rps", f"{added:+.2f} ms ({fmt_ms(dp99)} → {fmt_ms(sp99)})",
            f"≤ +{P99_TARGET_MS:g} ms", None if noisy else added <= P99_TARGET_MS,
            (f"the direct arm's round p99s spread {spread:.0f}x (median / best): the machine was too busy "
             "to measure a 1 ms difference in this run") if noisy else "median over rounds of each round's p99",
            inconclusive=noisy))
    result.checks.append(Check(
        "max throughput kept through the sidecar", f"{ratio:.0%} ({med['sidecar']:,.0f} vs {med['direct']:,.0f} rps)",
        f"≥ {THROUGHPUT_TARGET:.0%}", ratio >= THROUGHPUT_TARGET, "Envoy with one worker thread on one core"))
    for rate in rates:
        if rate == 1000:
            continue
        added = med_p99(rate, "sidecar") - med_p99(rate, "direct")
        result.checks.append(Check(f"p99 added at {rate:,} rps", f"{added:+.2f} ms", "(no target)", None))
    result.notes.append(
        "Instance: one Go upstream (`scripts/bench/go/upstream`, no service time, unlimited concurrency) on "
        "127.0.0.31, core 0. Load: vegeta on core 0, `GET /v1/infer`, keep-alive. Sidecar: Envoy with one "
        "worker thread on core 1, config rendered by `EnvoyFileSink` for one service with the default policy "
        "(least_request, retries for idempotent requests, outlier detection). The direct arm is the \"high-speed "
        "path\": the client calls the instance's IP itself.")
    if any(not c.passed for c in result.checks if c.passed is not None) or any(c.inconclusive
                                                                               for c in result.checks):
        result.notes.append(
            ("**A target is missed: why, and the plan.** " if any(c.passed is False for c in result.checks)
             else "**A target could not be decided: why, and the plan.** ")
            + "Through the sidecar each request makes two more "
            "loopback hops and crosses from core 0 to Envoy's core and back twice; on this VM a wake-up of an "
            "idle vCPU costs up to a few milliseconds, and that lands in the tail (the per-round p99s above "
            "swing by several ms between identical rounds). Max throughput through one Envoy worker is bounded "
            "by that one core"
            + (f": Envoy spent {np.median(envoy_cpu_us['max']):.0f} µs of CPU per request at full load, i.e. "
               f"about {1e6 / np.median(envoy_cpu_us['max']):,.0f} requests/s per core on this VM, while the "
               "direct arm's client and instance share one core too. " if envoy_cpu_us.get("max") else ". ")
            + "Plan: (1) re-measure on a machine with ≥ 4 dedicated cores, where Envoy gets "
            "2 workers; (2) profile Envoy's per-request work with `perf` (stats, retry and outlier bookkeeping); "
            "(3) if the gap holds there, document the sizing rule (one Envoy worker per the rate above) and offer a "
            "lean per-service profile (no retries/outlier detection) for latency-critical services.")
    result.raw = {"fixed": raw_fixed, "throughput": throughput, "throughput_ratio": ratio,
                  "envoy_retries": retries, "realistic": realistic, "envoy_cpu_us": envoy_cpu_us}

    # --- plot ------------------------------------------------------------------------------------------------
    fig, axes = report.figure(1, 2, width=11)
    ax = axes[0]
    width = 0.38
    xs = np.arange(len(rates))
    for offset, arm, color in ((-width / 2, "direct", "#4c72b0"), (width / 2, "sidecar", "#dd8452")):
        p50 = [fixed[r][arm].percentile_ms(50) for r in rates]
        p99 = [fixed[r][arm].percentile_ms(99) for r in rates]
        ax.bar(xs + offset, p99, width, color=color, alpha=0.45, label=f"{arm} p99")
        ax.bar(xs + offset, p50, width, color=color, label=f"{arm} p50")
    ax.set_xticks(xs, [f"{r:,} rps" for r in rates])
    ax.set_ylabel("latency (ms)")
    ax.set_title("p50 (solid) and pooled p99 (light), direct vs sidecar")
    ax.legend(fontsize=8)
    ax = axes[1]
    rate = 1000 if 1000 in fixed else rates[0]
    qs = np.array([50, 75, 90, 95, 99, 99.5, 99.9])
    for arm, color in (("direct", "#4c72b0"), ("sidecar", "#dd8452")):
        lat = fixed[rate][arm].latency * 1000
        ax.plot(-np.log10(1 - qs / 100), np.percentile(lat, qs), marker="o", color=color, label=arm)
    ax.set_xticks(-np.log10(1 - qs / 100), [f"p{q:g}" for q in qs], fontsize=8)
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"latency percentiles at {rate:,} rps")
    ax.legend()
    result.plots.append(report.save(fig, "overhead.png", ctx.img_dir))
    return result

