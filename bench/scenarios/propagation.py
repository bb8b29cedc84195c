"""Scenario 4, propagation: an instance appears in (or leaves) the ModelArts API; when does Envoy act on it?

Everything is real except the cloud: the emulator process (ModelArts + IAM + Python instances), the
`modelarts-agent run` process polling it under the 20/min budget and writing Envoy's files, and Envoy.
vegeta sends a steady open-loop load through Envoy the whole time; each response names its instance.

- Scale-out: `scale(n+1)` on the emulator's admin API lists a new instance at once; the figure is the
  time from then to the first response that new instance served through Envoy, split into "waiting for
  the next poll" (from the emulator's call log) and "poll → files → Envoy → first request".
- Scale-in: `scale(n-1)` unlists the newest instance (the emulator drains it). The figure is whether any
  request sent after Envoy dropped the host (the next sync) reached it, and how many requests failed.
"""

from __future__ import annotations

import random
import time

import numpy as np
from modelarts_emulator.client import EmulatorAdmin
from modelarts_emulator.config import DEFAULT_DOMAIN, DEFAULT_PASSWORD, DEFAULT_PROJECT_ID, DEFAULT_USER

from bench import report
from bench.loadgen import Attack, Target
from bench.scenarios import (
    Check,
    Ctx,
    Envoy,
    ScenarioResult,
    free_port,
    start_agent,
    start_emulator,
    wait_for,
)

NAME = "propagation"
TITLE = "4. Propagation: ModelArts change → Envoy"
SERVICE_ID = "bench-propagation"
POLL_SECONDS = 5.0
SLACK_SECONDS = 2.0
RATE = 150.0


def run(ctx: Ctx) -> ScenarioResult:
    from agent.config import parse_config

    result = ScenarioResult(NAME, TITLE)
    trials = 1 if ctx.quick else 3
    rng = random.Random(7)
    ctx.step("starting the emulator")
    _, info = start_emulator(ctx, {"services": [{
        "name": "llm", "service_id": SERVICE_ID, "instances": 3,
        "latency": {"base_ms": 2, "jitter_ms": 1, "distribution": "exponential"}}]})
    admin = EmulatorAdmin(info["admin_url"])
    listen, envoy_admin, agent_admin = free_port(), free_port(), free_port()
    config = {
        "modelarts": {"iam_url": info["iam_url"], "modelarts_url": info["modelarts_url"],
                      "project_id": DEFAULT_PROJECT_ID},
        "auth": {"mode": "password", "domain": DEFAULT_DOMAIN, "user": DEFAULT_USER},
        "discovery": {"allowed_cidrs": ["127.0.0.0/8"], "default_poll_interval_seconds": POLL_SECONDS},
        "services": [{"name": "llm", "service_id": SERVICE_ID, "listen_port": listen}],
        "envoy": {"output_dir": str(ctx.workdir / "envoy"), "admin_port": envoy_admin},
        "admin": {"port": agent_admin},
    }
    ctx.step("starting the agent (first sync)")
    start_agent(ctx, config, password=DEFAULT_PASSWORD)
    envoy = ctx.track(Envoy(parse_config(config, "bench"), ctx.workdir)).start()
    wait_for(lambda: len(envoy.hosts("llm")) == 3, 30, "Envoy sees 3 instances")

    duration = trials * (POLL_SECONDS + SLACK_SECONDS + POLL_SECONDS) + 2 * POLL_SECONDS + 8
    load = Attack("propagation", [Target(f"http://127.0.0.1:{listen}/v1/infer")], ctx.workdir, rate=RATE,
                  duration=duration).start()
    time.sleep(1.0)
    outs: list[dict[str, float | str]] = []
    count = 3
    for trial in range(trials):
        time.sleep(rng.uniform(0.0, POLL_SECONDS))  # a random phase against the poll cycle
        ctx.step(f"scale-out {trial + 1}/{trials}: {count} → {count + 1} instances")
        before = {i.instance_id for i in admin.instances(SERVICE_ID)}
        admin.scale(SERVICE_ID, count + 1)
        appeared = time.time()
        count += 1
        new = ({i.instance_id for i in admin.instances(SERVICE_ID)} - before).pop()
        def has_served(new: str = new) -> bool:
            return admin.instance(new).served > 0

        wait_for(has_served, POLL_SECONDS + 20, f"{new} served")
        outs.append({"instance": new, "appeared": appeared})
        time.sleep(0.5)

    time.sleep(rng.uniform(0.0, POLL_SECONDS))
    ctx.step(f"scale-in: {count} → {count - 1} instances")
    hosts_before = set(envoy.hosts("llm"))
    newest = admin.instances(SERVICE_ID)[-1]
    admin.scale(SERVICE_ID, count - 1)
    unlisted = time.time()
    wait_for(lambda: f"{newest.ip}:{newest.port}" not in envoy.hosts("llm"), POLL_SECONDS + 20,
             "Envoy drops the removed instance", interval=0.02)
    dropped = time.time()
    assert f"{newest.ip}:{newest.port}" in hosts_before
    time.sleep(1.5)
    load.interrupt()
    res = load.wait()
    calls = [c for c in admin.calls(api="modelarts") if c.service_id == SERVICE_ID and "endpoints" in c.path]
    poll_times = np.array(sorted(c.time for c in calls))

    rows = []
    totals = []
    for index, out in enumerate(outs):
        appeared = float(out["appeared"])
        served = [s + lat for s, lat, i, ok in zip(res.sent.tolist(), res.latency.tolist(), res.instance,
                                                   res.ok_mask.tolist(), strict=True) if ok and i == out["instance"]]
        first = min(served) if served else float("nan")
        next_poll = poll_times[poll_times >= appeared]
        poll_at = float(next_poll[0]) if next_poll.size else float("nan")
        total = first - appeared
        totals.append(total)
        rows.append([f"scale-out {index + 1}", str(out["instance"]), f"{poll_at - appeared:.2f} s",
                     f"{first - poll_at:.2f} s", f"{total:.2f} s"])
    result.tables.append(report.table(
        f"Scale-out: appearance in the API → first request served through Envoy (poll interval "
        f"{POLL_SECONDS:g} s, {RATE:g} rps of load)",
        ["trial", "new instance", "wait for the next poll", "poll → first served", "total"], rows))
    worst = max(totals)
    result.checks.append(Check("scale-out: API → first request served through Envoy (worst trial)",
                               f"{worst:.2f} s (trials: {', '.join(f'{t:.2f}' for t in totals)})",
                               f"≤ poll interval + {SLACK_SECONDS:g} s = {POLL_SECONDS + SLACK_SECONDS:g} s",
                               worst <= POLL_SECONDS + SLACK_SECONDS))

    removed_id = newest.instance_id
    after_drop = int(sum(1 for s, i, ok in zip(res.sent.tolist(), res.instance, res.ok_mask.tolist(), strict=True)
                         if ok and i == removed_id and s > dropped))
    between = int(sum(1 for s, i, ok in zip(res.sent.tolist(), res.instance, res.ok_mask.tolist(), strict=True)
                      if ok and i == removed_id and unlisted < s <= dropped))
    window = (res.sent >= unlisted) & (res.sent <= dropped + 1.0)
    failed_in_window = int((~res.ok_mask & window).sum())
    result.checks.append(Check("scale-in: requests reaching the removed instance after the next sync",
                               f"{after_drop}", "0", after_drop == 0,
                               f"Envoy dropped it {dropped - unlisted:.2f} s after it was unlisted"))
    result.checks.append(Check("scale-in: failed requests around the removal", f"{failed_in_window}",
                               "(no target)", None,
                               f"{between} requests reached it between unlisting and the sync (it drains)"))
    result.tables.append(report.table(
        "Scale-in", ["removed instance", "unlisted → dropped by Envoy", "served by it after the drop",
                     "served by it between unlisting and the drop", "failed requests (unlisting → drop + 1 s)"],
        [[removed_id, f"{dropped - unlisted:.2f} s", str(after_drop), str(between), str(failed_in_window)]]))
    result.notes.append(
        f"Agent: the real `modelarts-agent run` process, poll interval {POLL_SECONDS:g} s for its one service "
        "(the 20/min budget allows one call per 3.1 s), password auth against the emulator. Instances: the "
        "emulator's Python instances (2 ms service time) — here the API and the agent are measured, not "
        f"the data plane. Load: vegeta, {RATE:g} rps GET through Envoy for the whole scenario; the first "
        "served request is the first response carrying the new instance's `X-Instance-Id`. The next-poll time "
        "comes from the emulator's call log.")
    result.raw = {"scale_out_s": totals, "scale_in": {"drop_s": dropped - unlisted, "after_drop": after_drop,
                                                      "between": between, "failed": failed_in_window},
                  "sent": res.count, "failed_total": res.failed}

    fig, ax = report.figure(width=8, height=3.6)
    ax.bar(range(1, len(totals) + 1), totals, color="#4c72b0", label="API → first served")
    ax.axhline(POLL_SECONDS, color="gray", linestyle=":", label="poll interval")
    ax.axhline(POLL_SECONDS + SLACK_SECONDS, color="red", linestyle="--", label="target")
    ax.set_xlabel("scale-out trial")
    ax.set_ylabel("seconds")
    ax.set_title("scale-out propagation")
    ax.legend(fontsize=8)
    result.plots.append(report.save(fig, "propagation.png", ctx.img_dir))
    return result
