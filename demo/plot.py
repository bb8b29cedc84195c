"""A PNG of requests per second per instance over the demo, with the events marked."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from demo.load import LoadStats


def plot_timeline(stats: LoadStats, events: list[tuple[float, str]], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    seconds = sorted(stats.timeline)
    if not seconds:
        return None
    names = sorted({name for bucket in stats.timeline.values() for name in bucket})
    xs = list(range(seconds[0], seconds[-1] + 1))
    fig, ax = plt.subplots(figsize=(10, 4.5))
    empty: Counter[str] = Counter()
    series = [[stats.timeline.get(x, empty).get(name, 0) for x in xs] for name in names]
    ax.stackplot(xs, series, labels=names, alpha=0.85)
    for at, label in events:
        ax.axvline(at, color="black", linestyle="--", linewidth=1)
        ax.text(at + 0.2, ax.get_ylim()[1] * 0.95, label, rotation=90, va="top", fontsize=8)
    ax.set_xlabel("seconds since traffic started")
    ax.set_ylabel("requests per second")
    ax.set_title("Requests per instance through the Envoy sidecar")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
