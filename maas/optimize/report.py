"""The trade-off picture: accuracy against single-row latency, marker area by file size."""

from __future__ import annotations

from pathlib import Path

from maas.optimize.pipeline import Outcome


def write_tradeoff_png(outcome: Outcome, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    rows = [row for row in outcome.rows if not row.error]
    largest = max(row.figures["size_bytes"] for row in rows)
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for i, row in enumerate(rows):
        f = row.figures
        axis.scatter(f["latency_ms_batch1"], f["test_accuracy"], s=40 + 400 * f["size_bytes"] / largest,
                     alpha=0.6)
        axis.annotate(f"{row.variant} (v{row.version}, {f['size_bytes'] / 1024:.0f} KiB)",
                      (f["latency_ms_batch1"], f["test_accuracy"]), fontsize=8,
                      xytext=(6, 6 - 12 * (i % 3)), textcoords="offset points")
    axis.set_xscale("log")
    axis.set_xlabel("single-row call latency, ms (log)")
    axis.set_ylabel("test accuracy")
    axis.grid(alpha=0.3)
    axis.set_title(f"{outcome.parent.name} v{outcome.parent.version}: variants (marker area ~ file size)")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
