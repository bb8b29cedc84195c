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

from tests.ports import free_port

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


# A sidecar built as `modelarts-agent sidecar` builds it (its config, its sinks), not started: what it loaded.
BUILT = """
import json, sys
from pathlib import Path

from tests.ports import free_port
from agent.app.sidecar import SidecarRuntime
from agent.cli.sidecar_cmd import follow, load_sidecar_config
from agent.kube.client import KubeClient
from agent.sinks.factory import sinks_for
path, kubeconfig = Path(sys.argv[1]), Path(sys.argv[2])
def load(p):
    return follow(load_sidecar_config(p, []), [])
kube = KubeClient.connect(kubeconfig)  # nothing listens there: the runtime is only built
runtime = SidecarRuntime(load(path), path, kube=kube, namespace="apps", loader=load, sink_factory=sinks_for)
print(json.dumps(sorted(sys.modules)))
"""


def modules_of_a_built_sidecar(tmp_path: Path, config: str) -> set[str]:
    path, kubeconfig = tmp_path / "sidecar.yaml", tmp_path / "kubeconfig"
    path.write_text(config)
    kubeconfig.write_text("clusters: [{name: c, cluster: {server: 'http://127.0.0.1:9'}}]\n"
                          "users: [{name: u, user: {token: t}}]\n"
                          "contexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n")
    proc = subprocess.run([sys.executable, "-c", BUILT, str(path), str(kubeconfig)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=True)
    return set(json.loads(proc.stdout.splitlines()[-1]))


def test_a_file_mode_sidecar_never_loads_grpc_and_an_xds_one_does(tmp_path: Path) -> None:
    """grpcio (its C core, the asyncio bridge and the xDS server's modules, ~14 MiB of RSS) is for a sidecar
    that serves ADS (`xds.enabled`, the gateway pods); the sidecar of an app pod writes Envoy files."""
    services = "services:\n  - name: chat\n    listen_port: 10080\n"
    files = modules_of_a_built_sidecar(tmp_path, f"admin: {{port: 0}}\nenvoy: {{output_dir: {tmp_path}/envoy}}\n"
                                                 f"{services}")
    assert "agent.sinks.envoy.files" in files
    loaded = sorted(m for m in files if m.split(".")[0] == "grpc" or m.startswith("agent.sinks.xds"))
    assert not loaded, f"a file-mode sidecar loads {loaded[:8]}"
    xds = modules_of_a_built_sidecar(tmp_path, f"admin: {{port: 0}}\nenvoy: {{files: false}}\n"
                                               f"xds: {{enabled: true, port: {free_port()}}}\n{services}")
    assert "grpc" in xds and "agent.sinks.xds.server" in xds  # the check above can tell
