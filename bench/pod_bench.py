"""`make bench` (its last step): the cost per pod of the sidecar and the controller at scale, on a real apiserver.

    python -m bench.pod_bench                    # both, about 8 minutes; results in bench/results/
    python -m bench.pod_bench --only sidecar     # or: --only controller
    python -m bench.pod_bench --report-only      # rewrite the docs/benchmarks.md section from the results
    python -m bench.pod_bench --label before     # also keep a copy as bench/results/<name>-before.json

Runs inside scripts/vpc-netns (the Makefile does it), so nothing it starts can reach beyond loopback.
Each part starts its own kube-apiserver + etcd (tests/kubeenv.py) with an audit log, and stops every
process it started when it ends, whether it passed, failed or was interrupted. Each part is bounded
(an alarm ends a run that overstays PART_BUDGET).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from bench import kube_bench as kb
from bench import pod_report
from bench.env import REPO, machine_facts, machine_facts_date

RESULTS = REPO / "bench" / "results"
PART_BUDGET = 8 * 60


class PartTimeout(Exception):
    pass


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise PartTimeout(f"the part ran over its {PART_BUDGET} s budget")


def _log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def _start_env(workdir: Path, extra: list[str] | None = None) -> tuple[Any, kb.ApiServer, Path]:
    from tests.kubeenv import KubeTestEnv

    args, audit_log = kb.audit_args(workdir / "audit")
    env = KubeTestEnv(workdir / "kube", extra_apiserver_args=[*args, *(extra or [])])
    env.start()
    return env, kb.ApiServer(env.server_url, env.admin_token, env.ca_path), audit_log


def run_sidecar(workdir: Path, quick: bool) -> dict[str, Any]:
    from bench import sidecar_cost

    # The image ships compiled bytecode (Dockerfile: compileall); a checkout under PYTHONDONTWRITEBYTECODE
    # has none for agent/, so every measured start would compile the agent's modules first.
    subprocess.run([sys.executable, "-m", "compileall", "-q", "agent"], cwd=REPO, check=True, timeout=300,
                   stdout=subprocess.DEVNULL)
    env, api, audit_log = _start_env(workdir)
    try:
        idle, churn = (15.0, 10.0) if quick else (60.0, 30.0)
        cases = [sidecar_cost.run_case(env, api, audit_log, workdir / f"pod-{n}", n, idle, churn, _log)
                 for n in (1, 10)]
        _log("sidecar: -X importtime start (not measured) for the breakdown")
        profile = sidecar_cost.import_profile(env, api, workdir / "profile")
        memory = json.loads(subprocess.run(
            [sys.executable, "-m", "bench.import_cost", str(workdir / "profile" / "importtime.txt")], cwd=REPO,
            check=True, capture_output=True, text=True, timeout=120).stdout)
        return {"cases": cases, "importtime": profile, "import_memory": memory}
    finally:
        api.close()
        env.stop()


def run_controller(workdir: Path, quick: bool) -> dict[str, Any]:
    from bench import controller_scale

    env, api, audit_log = _start_env(workdir)
    try:
        scale = controller_scale.Scale(crs=100, secrets=5, steady_seconds=40.0, steady_until=None) if quick else \
            controller_scale.Scale(crs=1000, secrets=50, steady_seconds=150.0)
        return controller_scale.run(env, api, audit_log, workdir, scale, _log)
    finally:
        api.close()
        env.stop()


PARTS = {"sidecar": (run_sidecar, "sidecar-cost"), "controller": (run_controller, "controller-scale")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pod_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(PARTS), help="run one part")
    parser.add_argument("--quick", action="store_true", help="smaller and shorter (a smoke run; not reported)")
    parser.add_argument("--report-only", action="store_true", help="rewrite the docs section from the results")
    parser.add_argument("--label", help="also save the results as bench/results/<name>-<label>.json")
    args = parser.parse_args(argv)
    if not args.report_only:
        signal.signal(signal.SIGALRM, _on_alarm)
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        facts = machine_facts()
        for name in [args.only] if args.only else list(PARTS):
            runner, stem = PARTS[name]
            workdir = REPO / "run" / "pod-bench" / name
            subprocess.run(["rm", "-rf", str(workdir)], check=False)
            workdir.mkdir(parents=True)
            _log(f"{name}: starting (load average {kb.loadavg()})")
            load_before = kb.loadavg()
            started = time.monotonic()
            signal.alarm(PART_BUDGET)
            try:
                result = runner(workdir, args.quick)
                error = None
            except (PartTimeout, KeyboardInterrupt, Exception) as exc:  # recorded, and the other part still runs
                result, error = {}, f"{type(exc).__name__}: {exc}"[:600]
                _log(f"{name}: FAILED: {error}")
                if isinstance(exc, KeyboardInterrupt):
                    raise
            finally:
                signal.alarm(0)
            result.update({"error": error, "seconds": round(time.monotonic() - started, 1), "quick": args.quick,
                           "loadavg": {"before": load_before, "after": kb.loadavg()}, "ran_at": machine_facts_date(),
                           "git_commit": facts.get("git_commit"), "nproc": facts.get("nproc"),
                           "cpu_model": facts.get("cpu_model")})
            out = RESULTS / (f"{stem}-quick.json" if args.quick else f"{stem}.json")
            out.write_text(json.dumps(result, indent=1, default=str) + "\n")
            if args.label and not args.quick:
                (RESULTS / f"{stem}-{args.label}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
            _log(f"{name}: done in {result['seconds']:.0f} s -> {out.relative_to(REPO)}")
    pod_report.update_doc(REPO / "docs" / "benchmarks.md", RESULTS)
    for line in pod_report.summary_lines(RESULTS):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
