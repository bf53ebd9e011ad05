"""Many requests, few model calls: the rows of a batch of requests are stacked into one call per
model version and the outputs split back in request order."""

from __future__ import annotations

from typing import Any

import numpy as np


def split_batch(outputs: np.ndarray, lengths: list[int]) -> list[np.ndarray]:
    """Undo the stacking of several requests' rows into one model call."""
    return np.split(outputs, np.cumsum(lengths)[:-1])


def predict_grouped(items: list[tuple[Any, np.ndarray]],
                    observe: Any = None) -> list[np.ndarray]:
    """One model call per distinct model in a batch of ``(model, rows)`` requests; outputs come
    back in request order. A batch can mix versions (a request pinned to version 3 beside one for
    the default), and a request keeps the model it was validated against even if a swap happens
    while it waits. ``observe(model, rows_in_call)`` is told about each call (metrics)."""
    groups: dict[int, list[int]] = {}
    for index, (model, _) in enumerate(items):
        groups.setdefault(id(model), []).append(index)
    results: list[Any] = [None] * len(items)
    for indices in groups.values():
        model = items[indices[0]][0]
        arrays = [items[i][1] for i in indices]
        stacked = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
        if observe is not None:
            observe(model, len(stacked))
        outputs = split_batch(model.predict(stacked), [len(a) for a in arrays])
        for i, output in zip(indices, outputs, strict=True):
            results[i] = output
    return results
