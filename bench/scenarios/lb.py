"""Scenario 2, load-balancing quality: 4 instances, one 5x slower, under open-loop load.

Compared: Envoy least_request (plain: `lb.adaptive` off here; the adaptive default is measured against it
by `make bench-adaptive`), round_robin and random (what kube-proxy's iptables
mode does: a random pick per connection), and a naive client-side round robin over the discovered IPs
(vegeta rotating over the four instance URLs: what users write when left alone). Instances are Go
upstreams with a fixed service time (3 x 10 ms, 1 x 50 ms) and 4 request slots each (a request waits for
a slot), so the pool serves 3 x 400 + 80 = 1,280 rps at most.
"""

from __future__ import annotations

import contextlib
import time
import urllib.request

import numpy as np

from bench import report
from bench.loadgen import Attack, Results, Target, Upstream
from bench.scenarios import Check, Ctx, ScenarioResult, fmt_ms, free_port, sidecar

NAME = "lb"
TITLE = "2. Load-balancing quality: one slow instance out of four"
FAST_MS, SLOW_MS, SLOTS = 10.0, 50.0, 4
TARGET_RATIO = 0.5
POLICIES = ["least_request", "round_robin", "random", "naive client RR"]


def _drain(url: str, limit_s: float = 20.0) -> None:
    """Wait until the slow instance answers in about its service time again (its queue is empty)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        started = time.monotonic()
        with contextlib.suppress(OSError):
            opener.open(url, timeout=limit_s).read()
        if time.monotonic() - started < (SLOW_MS * 1.6) / 1000:
            return
        time.sleep(0.2)


def run(ctx: Ctx) -> ScenarioResult:
    result = ScenarioResult(NAME, TITLE)
    rates = [400] if ctx.quick else [200, 400]
    seconds = 4.0 if ctx.quick else 8.0  # per policy and rate, in 2 rounds
    policies = ["least_request", "round_robin", "naive client RR"] if ctx.quick else POLICIES

    ctx.step("starting 4 Go upstreams and Envoy")
    ups = [ctx.track(Upstream(f"lb-{i}{'-slow' if i == 3 else ''}", f"127.0.0.{51 + i}", ctx.workdir,
                              service_ms=SLOW_MS if i == 3 else FAST_MS, concurrency=SLOTS)).start()
           for i in range(4)]
    slow = ups[3]
    ports = {p: free_port() for p in ("least_request", "round_robin", "random")}
    services = [{"name": p.replace("_", "-"), "listen_port": port, "lb": {"policy": p, "adaptive": False}}
                for p, port in ports.items()]
    endpoints = {p.replace("_", "-"): [(u.ip, u.port) for u in ups] for p in ports}
    sidecar(ctx, services, endpoints)
    targets = {p: [Target(f"http://127.0.0.1:{port}/v1/infer")] for p, port in ports.items()}
    targets["naive client RR"] = [Target(f"{u.url}/v1/infer") for u in ups]

    for policy in policies:  # warm-up: connection pools of every path
        Attack(f"warm-{policy.replace(' ', '-')}", targets[policy], ctx.workdir, rate=100, duration=1.0,
               per_request=False).start().wait()
    _drain(f"{slow.url}/probe")

    # Two rounds per policy, the second in reverse order, so a burst of noise on the shared machine does
    # not land on one policy only; each round starts with the slow instance's queue empty.
    runs: dict[int, dict[str, Results]] = {}
    for rate in rates:
        parts: dict[str, list[Results]] = {p: [] for p in policies}
        for round_index in range(2):
            for policy in policies if round_index == 0 else list(reversed(policies)):
                ctx.step(f"{rate} rps, round {round_index + 1}/2: {policy}")
                parts[policy].append(Attack(f"{policy.replace(' ', '-')}-{rate}-{round_index}", targets[policy],
                                            ctx.workdir, rate=rate, duration=seconds / 2).start().wait())
                ctx.step(f"{rate} rps: {policy} (waiting for the slow instance's queue to drain)")
                _drain(f"{slow.url}/probe")
        runs[rate] = {p: Results.concat(r) for p, r in parts.items()}

    rows = []
    raw: dict[str, dict[str, object]] = {}
    for rate, by_policy in runs.items():
        for policy, res in by_policy.items():
            p = res.percentiles_ms()
            shares = res.per_instance()
            total = max(1, sum(shares.values()))
            slow_share = shares.get(slow.instance_id, 0) / total
            rows.append([f"{rate}", policy, fmt_ms(p["p50"]), fmt_ms(p["p99"]), fmt_ms(p["p99.9"]),
                         f"{slow_share:.1%}", f"{res.failed} / {res.count}"])
            raw[f"{rate}/{policy}"] = {**p, "slow_share": slow_share, "failed": res.failed, "sent": res.count}
    result.tables.append(report.table(
        f"Latency by policy (open loop, 2 rounds of {seconds / 2:g} s per policy, the second in reverse order)",
        ["rate (rps)", "policy", "p50", "p99", "p99.9", "share to the slow instance", "failed / sent"], rows))

    main_rate = 400
    lr = runs[main_rate]["least_request"].percentile_ms(99)
    rr = runs[main_rate]["round_robin"].percentile_ms(99)
    ratio = lr / rr if rr else float("inf")
    result.checks.append(Check(f"least_request p99 / round_robin p99 at {main_rate} rps",
                               f"{ratio:.2f} ({fmt_ms(lr)} vs {fmt_ms(rr)})", f"≤ {TARGET_RATIO}",
                               ratio <= TARGET_RATIO))
    for other in ("random", "naive client RR"):
        if other in runs[main_rate]:
            value = runs[main_rate][other].percentile_ms(99)
            result.checks.append(Check(f"least_request p99 / {other} p99 at {main_rate} rps",
                                       f"{lr / value:.2f} ({fmt_ms(lr)} vs {fmt_ms(value)})", "(no target)", None))
    if 200 in runs:
        lr2, rr2 = runs[200]["least_request"].percentile_ms(99), runs[200]["round_robin"].percentile_ms(99)
        result.checks.append(Check("least_request p99 / round_robin p99 at 200 rps",
                                   f"{lr2 / rr2:.2f} ({fmt_ms(lr2)} vs {fmt_ms(rr2)})", "(no target)", None))
    result.notes.append(
        f"Instances: 4 Go upstreams (`scripts/bench/go/upstream`) on 127.0.0.51-54, core 0: three with a "
        f"{FAST_MS:g} ms service time and one with {SLOW_MS:g} ms, {SLOTS} request slots each (requests beyond "
        f"that queue). Capacity: {3 * SLOTS * 1000 / FAST_MS:.0f} + {SLOTS * 1000 / SLOW_MS:.0f} = "
        f"{3 * SLOTS * 1000 / FAST_MS + SLOTS * 1000 / SLOW_MS:.0f} rps. At {main_rate} rps the pool is at "
        f"{main_rate / (3 * SLOTS * 1000 / FAST_MS + SLOTS * 1000 / SLOW_MS):.0%} of its capacity, but any "
        f"policy that gives each instance a fixed quarter sends {main_rate / 4:.0f} rps to an instance that "
        f"serves {SLOTS * 1000 / SLOW_MS:.0f}: its queue grows for the whole round (so that p99 grows with the "
        f"round length, {seconds / 2:g} s here). Envoy's three policies are "
        "three listeners of one Envoy (one worker, core 1) rendered by `EnvoyFileSink`; the naive client "
        "round robin is vegeta itself rotating over the four instance URLs, with no proxy. `random` stands for "
        "kube-proxy in iptables mode, which picks a backend at random per connection.")
    result.raw = raw

    fig, axes = report.figure(1, len(rates), width=5.5 * len(rates))
    axes = np.atleast_1d(axes)
    colors = {"least_request": "#55a868", "round_robin": "#c44e52", "random": "#8172b2",
              "naive client RR": "#937860"}
    for ax, rate in zip(axes, rates, strict=True):
        names = list(runs[rate])
        xs = np.arange(len(names))
        for offset, q, alpha in ((-0.27, 50, 1.0), (0.0, 99, 0.7), (0.27, 99.9, 0.4)):
            values = [runs[rate][n].percentile_ms(q) for n in names]
            ax.bar(xs + offset, values, 0.26, alpha=alpha, color=[colors[n] for n in names],
                   label=f"p{q:g}")
        ax.set_yscale("log")
        ax.set_xticks(xs, [n.replace(" ", "\n") for n in names], fontsize=8)
        ax.set_ylabel("latency (ms, log)")
        ax.set_title(f"{rate} rps: p50 / p99 / p99.9 (left to right)")
    result.plots.append(report.save(fig, "lb.png", ctx.img_dir))
    return result
