"""The sidecar runs in every app pod: what it imports is memory and start-up time in each of them.

`modelarts-agent sidecar` builds the whole CLI parser and then imports what its handler needs. Neither
may pull in what only other commands use: the runtime of `run` (ModelArts client, signer, budgets),
rich (tables of `endpoints` and `status`), the generated Kubernetes client (`kubernetes`: the sidecar's
credentials go over agent/kube/rest.py; the generated client is only for exotic kubeconfigs and is
loaded when one is used). bench/pod_bench.py measures the cost.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The handler's own imports (read from its source, so the test follows the handler when it changes).
PROGRAM = """
import ast, importlib, inspect, json, sys
import agent.cli.main, agent.cli.sidecar_cmd
agent.cli.main.build_parser()
tree = ast.parse(inspect.getsource(agent.cli.sidecar_cmd.run).lstrip())
for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module:
        importlib.import_module(node.module)
    elif isinstance(node, ast.Import):
        for alias in node.names:
            importlib.import_module(alias.name)
print(json.dumps(sorted(sys.modules)))
"""

ONLY_OTHER_COMMANDS = ("rich", "agent.app.run", "agent.modelarts", "huaweicloudsdkcore", "kubernetes",
                       "agent.kube.generated")


def test_the_sidecar_imports_nothing_that_only_other_commands_use() -> None:
    proc = subprocess.run([sys.executable, "-c", PROGRAM], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=True)
    modules = json.loads(proc.stdout)
    assert "agent.sources.kubernetes" in modules  # the handler's imports did run
    loaded = sorted(m for m in modules if m.split(".")[0] in ONLY_OTHER_COMMANDS or
                    any(m == p or m.startswith(p + ".") for p in ONLY_OTHER_COMMANDS))
    assert not loaded, f"the sidecar imports what only other commands need: {loaded[:12]}"
