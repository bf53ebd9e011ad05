"""Batching that holds a latency target: how long a batch waits for more requests, and how many it
takes, chosen from what the batcher observes instead of a fixed ``batch_wait_timeout_s``.

``LatencyTarget`` is pure bookkeeping (no clock, no asyncio: the batcher passes the time in), so it
is deterministic given its observations and unit-tested with made-up ones. What it observes, all
O(1) per batch and nothing per request:

* the model call's time against the rows in the call, as an exponentially weighted least-squares
  fit ``seconds ~= fixed + per_row * rows`` (the fixed part is what batching saves);
* the arrival rate, from how many requests joined the queue between two batches;
* the latency the oldest request of each batch actually saw (arrival to result), which drives a
  back-off when it runs past the budget (AIMD: cut fast, recover slowly).

How it decides (``plan``), with ``budget = target * HEADROOM * backoff``:

* cap: the most requests whose call still fits twice in the budget (a request that arrives just as a
  call starts waits for that call, then rides the next one), but never fewer than keep up with
  1.25x the arrival rate (below that the queue grows without bound and no target holds), at most
  ``max_batch_size``;
* wait: none when fewer than two requests are queued (no backlog: the replica is keeping up, and a
  wait would only add latency, which under a closed-loop client also costs throughput), when the
  rate says not even one more request will come within the budget (sparse arrivals), or when the
  queue already holds the batch it aims for. Otherwise it waits for the batch that keeps the call's
  fixed cost near ``OVERHEAD_SHARE`` of the replica's time (``rate * fixed / OVERHEAD_SHARE``
  requests), no more than can arrive while the oldest request's age, the wait and two calls of
  that size still fit in the budget; it stops early once a whole ``GAP_ARRIVALS / rate`` passes
  with no arrival (a closed-loop client has nothing more to send until it gets its answers), and
  when past waits gathered under half the arrivals the rate promised it stops waiting (retrying
  now and then): the rate it waits on is discounted by that yield.
"""

from __future__ import annotations

import math
from typing import Any

ALPHA = 0.2  # weight of the newest observation in every moving average
HEADROOM = 0.5  # share of the target the batcher may spend; HTTP, parsing and the proxy get the rest
OVERHEAD_SHARE = 0.05  # aim for batches that keep the per-call fixed cost near 5% of the time
GAP_ARRIVALS = 2.0  # stop waiting after this many mean inter-arrival times with no arrival
BACKOFF, RECOVER, BACKOFF_FLOOR = 0.7, 0.02, 0.25
STABLE_MARGIN = 1.25  # the cap keeps up with 1.25x the arrival rate
YIELD_FLOOR = 0.5  # below this share of the promised arrivals, waits stop
MIN_TARGET_S = 0.001  # below 1 ms the HTTP request alone misses the target


class LatencyTarget:
    """The adaptive policy of one model's batcher; ``state()`` is what the model's status shows."""

    def __init__(self, target_s: float, max_batch_size: int):
        self.target_s, self.max_batch_size = target_s, max_batch_size
        # moving averages of rows x, seconds y, x*x and x*y over calls: the call-time fit
        self._calls = 0
        self._x = self._y = self._xx = self._xy = 0.0
        self._rows_per_item = 1.0
        # arrival rate as a ratio of moving averages (arrivals / seconds between batches)
        self._arrivals = self._seconds = 0.0
        self._last_cut: float | None = None
        self.backoff = 1.0
        # arrivals that waits actually gathered over what the rate promised: a closed-loop client
        # whose requests are all queued sends nothing more, whatever its rate was
        self.wait_yield, self.wait_rate = 1.0, 0.0
        self.last_wait_s, self.last_cap, self.last_latency_s = 0.0, max_batch_size, 0.0

    # --- observations ------------------------------------------------------------------------

    def on_cut(self, now: float, arrived: int) -> None:
        """A batch is cut at ``now``; ``arrived`` requests joined the queue since the last cut."""
        if self._last_cut is not None and now > self._last_cut:
            if self._arrivals == 0 and self._seconds == 0:
                self._arrivals, self._seconds = float(arrived), now - self._last_cut
            else:
                self._arrivals += ALPHA * (arrived - self._arrivals)
                self._seconds += ALPHA * (now - self._last_cut - self._seconds)
        self._last_cut = now

    def on_call(self, items: int, rows: int, seconds: float, latency_s: float) -> None:
        """A call of ``items`` requests (``rows`` rows) took ``seconds``; its oldest request waited
        ``latency_s`` from arrival to result."""
        x, y = float(rows), seconds
        if self._calls == 0:
            self._x, self._y, self._xx, self._xy = x, y, x * x, x * y
            self._rows_per_item = rows / max(items, 1)
        else:
            self._x += ALPHA * (x - self._x)
            self._y += ALPHA * (y - self._y)
            self._xx += ALPHA * (x * x - self._xx)
            self._xy += ALPHA * (x * y - self._xy)
            self._rows_per_item += ALPHA * (rows / max(items, 1) - self._rows_per_item)
        self._calls += 1
        self.last_latency_s = latency_s
        if latency_s > self.target_s * HEADROOM:
            self.backoff = max(BACKOFF_FLOOR, self.backoff * BACKOFF)
        else:
            self.backoff = min(1.0, self.backoff + RECOVER)

    def on_wait(self, planned_rate: float, waited_s: float, gained: int) -> None:
        """A wait of ``waited_s`` planned at ``planned_rate`` arrivals/s gathered ``gained``."""
        expected = planned_rate * waited_s
        if expected > 0:
            self.wait_yield += ALPHA * (min(1.0, gained / expected) - self.wait_yield)

    # --- estimates ---------------------------------------------------------------------------

    def fit(self) -> tuple[float, float]:
        """(fixed seconds per call, seconds per row). While every call had about the same rows the
        two cannot be told apart: then all of it counts as per-row time (the cautious reading for
        the cap; it also means no wait is bought for a fixed cost that was never seen)."""
        if self._calls == 0:
            return 0.0, 0.0
        variance = self._xx - self._x * self._x
        if variance <= 0.25 or self._x <= 0:  # rows' spread under half a row
            return 0.0, self._y / max(self._x, 1.0)
        per_row = max(0.0, (self._xy - self._x * self._y) / variance)
        fixed = self._y - per_row * self._x
        if fixed < 0:  # a line through the origin fits better than one below it
            return 0.0, self._y / self._x
        return fixed, per_row

    def call_s(self, items: int) -> float:
        """Expected seconds of a call of ``items`` requests."""
        fixed, per_row = self.fit()
        return fixed + per_row * self._rows_per_item * items

    def rate(self, now: float | None = None, arrived: int = 0) -> float:
        """Arrivals per second. With ``now``: never more than what the time since the last batch
        allows (after a quiet spell the old rate of a busy one would promise arrivals that are not
        coming)."""
        rate = self._arrivals / self._seconds if self._seconds > 0 else 0.0
        if now is not None and self._last_cut is not None and now > self._last_cut:
            rate = min(rate, max(arrived, 1) / (now - self._last_cut))
        return rate

    def budget_s(self) -> float:
        return self.target_s * HEADROOM * self.backoff

    def cap(self, rate: float | None = None) -> int:
        """The most requests whose call fits twice in the budget, but never fewer than keep up with
        ``rate`` (a smaller cap would let the queue, and every request's latency, grow without
        bound); within [1, max_batch_size]."""
        fixed, per_row = self.fit()
        per_item = per_row * self._rows_per_item
        if per_item <= 0:
            return self.max_batch_size
        most = math.floor((self.budget_s() / 2 - fixed) / per_item)
        rate = self.rate() if rate is None else rate
        busy = rate * per_item  # share of the time the rows alone keep the model busy
        if busy >= 1 / STABLE_MARGIN:
            return self.max_batch_size
        keeps_up = math.ceil(STABLE_MARGIN * rate * fixed / (1 - STABLE_MARGIN * busy))
        return max(1, min(self.max_batch_size, max(most, keeps_up)))

    # --- the decision ------------------------------------------------------------------------

    def plan(self, now: float, queued: int, arrived: int, age_s: float) -> tuple[float, int, int, float]:
        """``(wait_s, cap, fill_to, gap_s)`` for the batch about to form: wait at most ``wait_s``
        for ``fill_to`` requests, giving up after ``gap_s`` without an arrival, then take at most
        ``cap``. ``queued``: requests waiting now, ``arrived`` of them since the last batch;
        ``age_s``: how long the oldest has waited."""
        rate = self.rate(now, arrived)
        cap = self.cap(self.rate())
        wait_s, fill_to, gap_s = 0.0, cap, 0.0
        if 2 <= queued < cap and rate > 0:
            if self.wait_yield < YIELD_FLOOR:  # waits have been gathering nothing: skip, and
                self.wait_yield += RECOVER  # try again now and then, the load may have changed
                self.last_wait_s, self.last_cap = 0.0, cap
                return 0.0, cap, cap, 0.0
            self.wait_rate = rate  # what on_wait measures the yield against
            rate *= self.wait_yield
            fixed, per_row = self.fit()
            # the most requests n whose filling, (n - queued) / rate, plus two calls of n still fit
            # in what the oldest has left of the budget
            fits = ((self.budget_s() - age_s - 2 * fixed + queued / rate)
                    / (1 / rate + 2 * per_row * self._rows_per_item))
            goal = min(cap, math.ceil(rate * fixed / OVERHEAD_SHARE), math.floor(fits))
            if goal > queued:
                wait_s, fill_to, gap_s = (goal - queued) / rate, goal, GAP_ARRIVALS / rate
        self.last_wait_s, self.last_cap = wait_s, cap
        return wait_s, cap, fill_to, gap_s

    def state(self) -> dict[str, Any]:
        """What the model's status shows while the target is on."""
        fixed, per_row = self.fit()
        return {"mode": "latency_target", "latency_target_ms": round(self.target_s * 1e3, 3),
                "budget_ms": round(self.budget_s() * 1e3, 3), "backoff": round(self.backoff, 3),
                "wait_yield": round(self.wait_yield, 3),
                "wait_ms": round(self.last_wait_s * 1e3, 3), "batch_cap": self.last_cap,
                "call_ms_fixed": round(fixed * 1e3, 4), "call_ms_per_row": round(per_row * 1e3, 5),
                "rows_per_request": round(self._rows_per_item, 2),
                "arrivals_per_s": round(self.rate(), 1),
                "last_batch_latency_ms": round(self.last_latency_s * 1e3, 3), "calls_observed": self._calls}
