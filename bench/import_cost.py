"""Where a process's memory goes, package by package: import the modules a real run imported, in its order.

    python -m bench.import_cost IMPORTTIME_FILE     # stderr of `python -X importtime ...`; prints JSON

The modules are imported one at a time in the order the real process finished them, and the RSS
(/proc/self/status) is read after each, the growth summed per top-level package; the Python heap
(tracemalloc) is measured the same way in a second process. A package the real process imported
lazily, late, is counted the same way.

`groups` adds what leaving a group of packages out would save: in a fresh process, every module is
imported in order while imports of the group fail (so whatever needs the group is left out), then the
group's own modules: the RSS they add is what only the group needs, a lower bound (the code that uses
it, e.g. the models agent.config builds with pydantic, and the standard-library modules only it imports
are not counted). Summing per package instead charges a module
several packages use (http.client, hashlib's libcrypto) to whichever imported it first.
"""

from __future__ import annotations

import importlib
import importlib.abc
import json
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any


def modules_in_order(text: str) -> list[str]:
    found: list[str] = []
    for line in text.splitlines():
        if line.startswith("import time:") and "self [us]" not in line:
            name = line.rsplit("|", 1)[-1].strip()
            if name:
                found.append(name)
    return found


# What a sidecar in file mode could leave out, as top-level package names (bench/pod_report.py names them).
GROUPS: dict[str, tuple[str, ...]] = {
    "protobuf and the Envoy protos": ("google", "envoy", "xds", "udpa", "validate"),
    "pydantic": ("pydantic", "pydantic_core", "annotated_types", "typing_inspection"),
    "prometheus_client": ("prometheus_client",),
    "urllib3": ("urllib3",),
    "PyYAML": ("yaml", "_yaml"),
    "watchdog": ("watchdog",),
}


def rss_kib(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _import_all(modules: list[str]) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # a module that only imports in its real context (e.g. __main__)
            continue


class _Refuse(importlib.abc.MetaPathFinder):
    """Makes every import of the group fail, so what needs it fails to import and waits for the group."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        self.prefixes = prefixes

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
        if fullname.split(".")[0] in self.prefixes:
            raise ImportError(f"{fullname} is held back")


def group_cost(modules: list[str], prefixes: tuple[str, ...]) -> dict[str, int]:
    """Run in a fresh process: the RSS and anon KiB the group adds on top of everything that imports without it."""
    refuse = _Refuse(prefixes)
    sys.meta_path.insert(0, refuse)
    _import_all(modules)  # everything that does not need the group (what needs it fails and is left out)
    sys.meta_path.remove(refuse)
    rss, anon = rss_kib(), rss_kib("RssAnon")
    _import_all([m for m in modules if m.split(".")[0] in prefixes])
    return {"rss_kib": rss_kib() - rss, "anon_kib": rss_kib("RssAnon") - anon}


def measure(modules: list[str], heap: bool) -> dict[str, dict[str, int]]:
    """Import module by module in the order they finished in the real process (a module's own imports
    finish before it does, so each step adds about that one module), summed per top-level package.

    RSS and heap are measured in two processes: tracemalloc's own bookkeeping inflates the RSS."""
    if heap:
        tracemalloc.start()

    def reading() -> int:
        return tracemalloc.get_traced_memory()[0] // 1024 if heap else rss_kib()

    rows: dict[str, dict[str, int]] = {}  # package -> modules, kib
    last = reading()
    rows["(interpreter)"] = {"modules": 0, "kib": last}
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # a module that only imports in its real context (e.g. __main__)
            continue
        now = reading()
        row = rows.setdefault(name.split(".")[0], {"modules": 0, "kib": 0})
        row["modules"] += 1
        row["kib"] += now - last
        last = now
    return rows


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    modules = modules_in_order(Path(argv[0]).read_text(errors="replace"))
    if argv[1:] == ["--heap"]:
        print(json.dumps(measure(modules, heap=True)))
        return 0
    if argv[1:2] == ["--group"]:
        print(json.dumps(group_cost(modules, GROUPS[argv[2]])))
        return 0
    rss = measure(modules, heap=False)
    heap = json.loads(subprocess.run([sys.executable, "-m", "bench.import_cost", argv[0], "--heap"], check=True,
                                     capture_output=True, text=True, timeout=300).stdout)
    interpreter = rss.pop("(interpreter)")["kib"]
    heap.pop("(interpreter)", None)
    ranked = [{"package": k, "modules": v["modules"], "rss_kib": v["kib"], "heap_kib": heap.get(k, {}).get("kib", 0)}
              for k, v in sorted(rss.items(), key=lambda kv: -kv[1]["kib"])]
    total = interpreter + sum(r["rss_kib"] for r in ranked)
    groups = {name: json.loads(subprocess.run([sys.executable, "-m", "bench.import_cost", argv[0], "--group", name],
                                              check=True, capture_output=True, text=True, timeout=300).stdout)
              for name in GROUPS}
    print(json.dumps({"interpreter_rss_kib": interpreter, "total_rss_kib": total, "packages": ranked,
                      "groups": groups}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
