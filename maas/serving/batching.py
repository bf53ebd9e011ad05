"""Many requests, few model calls: the rows of a batch of requests are stacked into one call per
model version and the outputs split back in request order."""

from __future__ import annotations

import asyncio
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


class Batcher:
    """Many concurrent calls of ``func(item)`` gathered into one ``func(items)`` call: the first
    waiting item waits at most ``batch_wait_timeout_s`` for the batch to fill up to
    ``max_batch_size``. What ``@serve.batch`` does for a replica, without its per-call costs
    (Ray's signature extraction and bookkeeping took ~8% of the ingress's CPU per request);
    the settings change live (``set_max_batch_size``, ``set_batch_wait_timeout_s``)."""

    def __init__(self, func: Any, max_batch_size: int, batch_wait_timeout_s: float):
        self._func = func
        self.max_batch_size, self.batch_wait_timeout_s = max_batch_size, batch_wait_timeout_s
        self._queue: list[tuple[Any, asyncio.Future]] = []
        self._full: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None

    def set_max_batch_size(self, size: int) -> None:
        self.max_batch_size = size

    def set_batch_wait_timeout_s(self, seconds: float) -> None:
        self.batch_wait_timeout_s = seconds

    async def __call__(self, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append((item, future))
        if self._worker is None or self._worker.done():
            self._full = asyncio.Event()
            self._worker = loop.create_task(self._run())
        elif len(self._queue) >= self.max_batch_size and self._full is not None:
            self._full.set()
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            if len(self._queue) < self.max_batch_size and self.batch_wait_timeout_s > 0:
                full = self._full
                full.clear()
                timer = loop.call_later(self.batch_wait_timeout_s, full.set)
                await full.wait()
                timer.cancel()
            size = max(1, self.max_batch_size)
            batch, self._queue = self._queue[:size], self._queue[size:]
            batch = [(item, future) for item, future in batch if not future.done()]  # gone callers
            if not batch:
                continue
            try:
                results = await self._func([item for item, _ in batch])
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
