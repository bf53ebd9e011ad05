"""Many requests, few model calls: the rows of a batch of requests are stacked into one call per
model version and the outputs split back in request order."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np

from maas.serving.adaptive import LatencyTarget


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
    the settings change live (``set_max_batch_size``, ``set_batch_wait_timeout_s``).

    With a latency target (``set_latency_target_s``) a ``LatencyTarget`` policy chooses the wait and
    the batch cap per batch instead (``maas.serving.adaptive``); ``weigh(item)`` gives an item's
    rows for its call-time fit (default: 1 each)."""

    def __init__(self, func: Any, max_batch_size: int, batch_wait_timeout_s: float,
                 latency_target_s: float | None = None, weigh: Callable[[Any], int] | None = None):
        self._func = func
        self.max_batch_size, self.batch_wait_timeout_s = max_batch_size, batch_wait_timeout_s
        self._queue: list[tuple[Any, asyncio.Future]] = []
        self._full: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._fill_to = max_batch_size  # queue length that ends a wait at once
        self.policy: LatencyTarget | None = None
        self._weigh = weigh
        self._head_since = 0.0  # when the oldest queued item arrived (adaptive mode only)
        self._left = 0  # items still queued after the last cut: arrivals are counted past them
        self.set_latency_target_s(latency_target_s)

    def set_max_batch_size(self, size: int) -> None:
        self.max_batch_size = size
        if self.policy is None:
            self._fill_to = size
        else:
            self.policy.max_batch_size = size

    def set_batch_wait_timeout_s(self, seconds: float) -> None:
        self.batch_wait_timeout_s = seconds

    def set_latency_target_s(self, seconds: float | None) -> None:
        """Switch the adaptive policy on (or retarget it, keeping what it learnt) or off (None)."""
        if seconds is None:
            self.policy, self._fill_to = None, self.max_batch_size
        elif self.policy is None:
            self.policy = LatencyTarget(seconds, self.max_batch_size)
            # fixed mode kept neither: items queued now count as arrived now
            self._left = len(self._queue)
            try:
                self._head_since = asyncio.get_running_loop().time()
            except RuntimeError:  # no loop yet (built before serving): nothing is queued either
                pass
        else:
            self.policy.target_s = seconds

    async def __call__(self, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self._queue and self.policy is not None:
            self._head_since = loop.time()
        self._queue.append((item, future))
        if self._worker is None or self._worker.done():
            self._full = asyncio.Event()
            self._worker = loop.create_task(self._run())
        elif len(self._queue) >= self._fill_to and self._full is not None:
            self._full.set()
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            policy = self.policy
            if policy is None:
                size = max(1, self.max_batch_size)
                if len(self._queue) < self.max_batch_size and self.batch_wait_timeout_s > 0:
                    await self._wait(loop, self.batch_wait_timeout_s)
            else:
                size = await self._adaptive_wait(loop, policy)
            head = self._head_since
            batch, self._queue = self._queue[:size], self._queue[size:]
            batch = [(item, future) for item, future in batch if not future.done()]  # gone callers
            if not batch:
                continue
            started = loop.time() if policy is not None else 0.0
            try:
                results = await self._func([item for item, _ in batch])
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            if policy is not None:
                done = loop.time()
                rows = len(batch) if self._weigh is None else sum(self._weigh(i) for i, _ in batch)
                policy.on_call(len(batch), rows, done - started, done - head)
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def _wait(self, loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        full = self._full
        full.clear()
        timer = loop.call_later(seconds, full.set)
        await full.wait()
        timer.cancel()

    async def _adaptive_wait(self, loop: asyncio.AbstractEventLoop, policy: LatencyTarget) -> int:
        """Wait as the policy plans, then count the cut; the batch size to take."""
        now = loop.time()
        wait_s, cap, fill_to, gap_s = policy.plan(now, len(self._queue), len(self._queue) - self._left,
                                                  now - self._head_since)
        self._fill_to = fill_to
        deadline, seen = now + wait_s, len(self._queue)
        planned = seen
        # One timer per gap, not per arrival: wake every gap_s, go on only if someone came.
        while wait_s > 0 and len(self._queue) < fill_to:
            step = min(gap_s, deadline - loop.time())
            if step <= 0:
                break
            await self._wait(loop, step)
            if len(self._queue) == seen:
                break  # a whole gap without an arrival: this batch will not fill
            seen = len(self._queue)
        self._fill_to = cap  # between waits a full batch is what matters
        queued = len(self._queue)
        if wait_s > 0:
            policy.on_wait(policy.wait_rate, loop.time() - now, queued - planned)
        policy.on_cut(loop.time(), queued - self._left)
        self._left = max(0, queued - cap)
        return cap
