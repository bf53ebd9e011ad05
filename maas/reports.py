"""Pictures a person opens: learning curves for training runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_learning_curve(history: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Loss and accuracy per epoch, training beside validation, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    epochs = [int(h["epoch"]) for h in history]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = [h.get(prefix + metric) for h in history]
            if any(v is not None for v in values):
                axis.plot(epochs, values, style, marker="o", markersize=3,
                          label="validation" if prefix else "training")
        axis.set_xlabel("epoch")
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title or "learning curve")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
