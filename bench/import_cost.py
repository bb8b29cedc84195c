"""Where a process's memory goes, package by package: import the modules a real run imported, in its order.

    python -m bench.import_cost IMPORTTIME_FILE     # stderr of `python -X importtime ...`; prints JSON

The modules are imported one at a time in the order the real process finished them, and the RSS
(/proc/self/status) is read after each, the growth summed per top-level package; the Python heap
(tracemalloc) is measured the same way in a second process. A package the real process imported
lazily, late, is counted the same way.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import tracemalloc
from pathlib import Path


def modules_in_order(text: str) -> list[str]:
    found: list[str] = []
    for line in text.splitlines():
        if line.startswith("import time:") and "self [us]" not in line:
            name = line.rsplit("|", 1)[-1].strip()
            if name:
                found.append(name)
    return found


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


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
    rss = measure(modules, heap=False)
    heap = json.loads(subprocess.run([sys.executable, "-m", "bench.import_cost", argv[0], "--heap"], check=True,
                                     capture_output=True, text=True, timeout=300).stdout)
    interpreter = rss.pop("(interpreter)")["kib"]
    heap.pop("(interpreter)", None)
    ranked = [{"package": k, "modules": v["modules"], "rss_kib": v["kib"], "heap_kib": heap.get(k, {}).get("kib", 0)}
              for k, v in sorted(rss.items(), key=lambda kv: -kv[1]["kib"])]
    total = interpreter + sum(r["rss_kib"] for r in ranked)
    print(json.dumps({"interpreter_rss_kib": interpreter, "total_rss_kib": total, "packages": ranked}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
