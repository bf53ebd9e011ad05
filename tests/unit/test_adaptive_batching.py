"""Batching that holds a latency target: ``maas.serving.adaptive.LatencyTarget`` on made-up
observations, and the ``Batcher`` with it under simulated load on a virtual clock (no wall-clock
timing is asserted anywhere)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
import pytest

from maas.errors import ConfigError
from maas.schema import validate_config
from maas.serving.adaptive import HEADROOM, LatencyTarget
from maas.serving.batching import Batcher
from maas.serving.host import serve_batcher
from maas.serving.settings import ModelSettings
from tests.unit.test_serve_hosting import FakeRegistryHost

FIXED_S, PER_ROW_S = 0.002, 0.0002  # the fake model: 2 ms a call plus 0.2 ms a row


def trained(policy: LatencyTarget, rate: float, sizes: tuple[int, ...] = (1, 4, 8, 16, 2, 12)) -> float:
    """Feed ``policy`` calls of the fake model at ``sizes`` and arrivals at ``rate`` per second;
    returns the time of the last cut."""
    now = 0.0
    for _ in range(20):
        for rows in sizes:
            now += rows / rate
            policy.on_cut(now, rows)
            policy.on_call(rows, rows, FIXED_S + PER_ROW_S * rows, latency_s=0.001)
    return now


# --- the controller ----------------------------------------------------------------------------

def test_the_call_time_fit_recovers_fixed_and_per_row_cost() -> None:
    policy = LatencyTarget(0.02, 64)
    trained(policy, rate=1000)
    fixed, per_row = policy.fit()
    assert fixed == pytest.approx(FIXED_S, rel=1e-6) and per_row == pytest.approx(PER_ROW_S, rel=1e-6)
    assert policy.rate() == pytest.approx(1000, rel=1e-6)


def test_same_sized_calls_count_as_per_row_time_and_buy_no_wait() -> None:
    policy = LatencyTarget(0.02, 64)
    for step in range(1, 50):
        policy.on_cut(step * 0.001, 1)
        policy.on_call(1, 1, 0.003, 0.003)
    assert policy.fit() == pytest.approx((0.0, 0.003))
    assert policy.plan(0.05, queued=3, arrived=3, age_s=0)[0] == 0


def test_sparse_arrivals_get_no_wait_dense_ones_wait_within_the_budget() -> None:
    sparse = LatencyTarget(0.02, 64)
    last = trained(sparse, rate=20)  # a request every 50 ms: no batch would fill
    for queued in (1, 2, 5):
        assert sparse.plan(last + 0.001, queued, queued, age_s=0)[0] == 0

    dense = LatencyTarget(0.02, 64)
    last = trained(dense, rate=2000)
    wait_s, cap, fill_to, gap_s = dense.plan(last + 0.0005, queued=3, arrived=3, age_s=0)
    budget = 0.02 * HEADROOM
    assert 0 < wait_s <= budget - 2 * dense.call_s(fill_to)
    assert 3 < fill_to <= cap and 2 * dense.call_s(cap) <= budget + 1e-12 < 2 * dense.call_s(cap + 1)
    assert gap_s == pytest.approx(2 / 2000, rel=0.01)
    # the same backlog but one that has already waited most of the budget: go now
    assert dense.plan(last + 0.0005, queued=3, arrived=3, age_s=budget * 0.9)[0] == 0
    # no backlog (one request): the replica keeps up, a wait would only add latency
    assert dense.plan(last + 0.0005, queued=1, arrived=1, age_s=0)[0] == 0


def test_after_a_quiet_spell_the_old_busy_rate_buys_no_wait() -> None:
    policy = LatencyTarget(0.02, 64)
    last = trained(policy, rate=2000)
    assert policy.plan(last + 0.0005, 3, 3, 0)[0] > 0
    assert policy.plan(last + 5.0, 3, 3, 0)[0] == 0  # 3 arrivals in 5 s: not a busy replica


def test_the_cap_respects_max_batch_size_and_follows_it_live() -> None:
    policy = LatencyTarget(10.0, 16)  # a generous target: only max_batch_size limits
    last = trained(policy, rate=100_000)
    assert policy.plan(last, 5, 5, 0)[1] == 16
    policy.max_batch_size = 4
    wait_s, cap, fill_to, _ = policy.plan(last, 5, 5, 0)
    assert cap == 4 and fill_to <= 4 and wait_s == 0  # the queue already holds a full batch
    assert LatencyTarget(0.02, 64).plan(0.0, 1, 1, 0)[1] == 64  # nothing observed yet: no limit


def test_it_backs_off_when_observed_latency_runs_over_and_recovers_after() -> None:
    policy = LatencyTarget(0.02, 64)
    last = trained(policy, rate=2000)
    wait_before, cap_before, _, _ = policy.plan(last + 0.0005, 3, 3, 0)
    for _ in range(3):
        policy.on_call(8, 8, FIXED_S + 8 * PER_ROW_S, latency_s=0.015)  # over the 10 ms budget
    assert policy.backoff == pytest.approx(0.7 ** 3)
    wait_after, cap_after, _, _ = policy.plan(last + 0.0005, 3, 3, 0)
    assert cap_after < cap_before and wait_after < wait_before
    for _ in range(20):
        for rows in (1, 4, 8, 16, 2, 12):
            policy.on_call(rows, rows, FIXED_S + rows * PER_ROW_S, latency_s=0.004)
    assert policy.backoff == 1.0 and policy.plan(last + 0.0005, 3, 3, 0)[1] == cap_before
    for _ in range(50):
        policy.on_call(8, 8, 1.0, latency_s=1.0)
    assert policy.backoff == 0.25  # the floor: it never stops batching altogether
    assert policy.plan(last + 0.0005, 3, 3, 0)[1] >= 1


def test_state_reports_wait_cap_and_call_time() -> None:
    policy = LatencyTarget(0.02, 64)
    last = trained(policy, rate=2000)
    policy.plan(last + 0.0005, 3, 3, 0)
    state = policy.state()
    assert state["mode"] == "latency_target" and state["latency_target_ms"] == 20
    assert state["call_ms_fixed"] == pytest.approx(2.0) and state["call_ms_per_row"] == pytest.approx(0.2)
    assert state["wait_ms"] > 0 and 1 <= state["batch_cap"] <= 64 and state["arrivals_per_s"] > 0


# --- settings ----------------------------------------------------------------------------------

def test_latency_target_setting_is_optional_and_validated() -> None:
    assert ModelSettings().latency_target_ms is None  # today's fixed wait, unchanged
    assert ModelSettings(latency_target_ms=20).latency_target_ms == 20
    for bad in (0, -5, 120_000):
        with pytest.raises(ConfigError, match="latency_target_ms"):
            validate_config(ModelSettings, {"latency_target_ms": bad}, "user_config of m")
    with pytest.raises(ConfigError, match="below 1 ms"):
        validate_config(ModelSettings, {"latency_target_ms": 0.2}, "user_config of m")
    with pytest.raises(ConfigError, match="latency_target"):
        validate_config(ModelSettings, {"latency_target": 20}, "user_config of m")  # a typo


class AdaptiveHost(FakeRegistryHost):
    """The fake-registry host with the real batcher instead of the call-through one."""

    def __init__(self) -> None:
        super().__init__([1])
        self._predict_batch = serve_batcher(self.settings)(self._predict_many)


def test_the_target_is_applied_live_and_shown_in_the_status() -> None:
    async def scenario() -> None:
        host = AdaptiveHost()
        await host.configure({"latency_target_ms": 25, "max_batch_size": 8})
        answers = await asyncio.gather(*[host.infer([[0.0, 0.0]] * 2) for _ in range(5)])
        assert all(a["outputs"].shape == (2, 2) for a in answers)
        batching = (await host.status())["batching"]
        assert batching["latency_target_ms"] == 25 and batching["calls_observed"] >= 1
        assert batching["rows_per_request"] == 2  # rows, not requests, are what a call costs
        await host.configure({"latency_target_ms": 40})
        assert (await host.status())["batching"]["latency_target_ms"] == 40
        await host.configure({})
        assert "batching" not in await host.status() and host._predict_batch.policy is None

    asyncio.run(scenario())


# --- the batcher under simulated load ----------------------------------------------------------

class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock jumps to the next timer whenever nothing is ready to run: seconds
    of simulated load take milliseconds and give the same latencies every time."""

    def __init__(self) -> None:
        super().__init__()
        self._virtual_now = 0.0

    def time(self) -> float:
        return self._virtual_now

    def _run_once(self) -> None:
        if not self._ready:  # CPython's ready queue and timer heap; cancelled timers do not count
            due = [timer._when for timer in self._scheduled if not timer._cancelled]
            if due:
                self._virtual_now = max(self._virtual_now, min(due))
        super()._run_once()


def simulate(batcher_for: Callable[[Callable], Batcher], rate: float, seconds: float = 2.0,
             seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """Poisson arrivals at ``rate`` of one-row requests into the batcher over a fake model whose call
    takes FIXED_S + PER_ROW_S * rows (an await, so arrivals go on during it); each request's
    latency and each call's size."""
    sizes: list[int] = []

    async def model(items: list[int]) -> list[int]:
        sizes.append(len(items))
        await asyncio.sleep(FIXED_S + PER_ROW_S * len(items))
        return items

    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        batcher = batcher_for(model)
        gaps = np.random.default_rng(seed).exponential(1 / rate, int(rate * seconds))
        latencies: list[float] = []

        async def one(i: int) -> None:
            start = loop.time()
            assert await batcher(i) == i
            latencies.append(loop.time() - start)

        tasks = []
        for gap in gaps:
            await asyncio.sleep(gap)
            tasks.append(loop.create_task(one(len(tasks))))
        await asyncio.gather(*tasks)
        return latencies

    loop = VirtualClockLoop()
    try:
        latencies = loop.run_until_complete(main())
    finally:
        loop.close()
    return np.asarray(latencies), sizes


def run_sim(coroutine: Coroutine[Any, Any, Any]) -> Any:
    loop = VirtualClockLoop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        loop.close()


def adaptive(target_s: float, max_batch_size: int = 64) -> Callable[[Callable], Batcher]:
    return lambda func: Batcher(func, max_batch_size, 0.005, latency_target_s=target_s)


def fixed(wait_s: float, max_batch_size: int = 64) -> Callable[[Callable], Batcher]:
    return lambda func: Batcher(func, max_batch_size, wait_s)


def test_the_virtual_clock_runs_timers_in_order_without_sleeping() -> None:
    async def main() -> list[tuple[str, float]]:
        loop, seen = asyncio.get_running_loop(), []
        loop.call_later(5.0, lambda: seen.append(("late", loop.time())))
        cancelled = loop.call_later(0.5, lambda: seen.append(("cancelled", loop.time())))
        cancelled.cancel()
        await asyncio.sleep(1.0)
        seen.append(("slept", loop.time()))
        await asyncio.sleep(10.0)
        return seen

    assert run_sim(main()) == [("slept", 1.0), ("late", 5.0)]


@pytest.mark.parametrize("rate", [20, 300, 2000])
def test_adaptive_holds_the_target_where_a_long_fixed_wait_does_not(rate: int) -> None:
    target_s = 0.02
    latencies, _ = simulate(adaptive(target_s), rate)
    slow, _ = simulate(fixed(0.05), rate)
    assert np.percentile(latencies, 99) < target_s
    assert np.percentile(slow, 99) > target_s


def test_sparse_load_is_not_held_back_dense_load_is_batched() -> None:
    sparse, sparse_sizes = simulate(adaptive(0.02), rate=20)
    # one request at a time, answered in about one call: no wait for a batch that will not fill
    assert np.percentile(sparse, 50) == pytest.approx(FIXED_S + PER_ROW_S, rel=0.05)
    assert np.mean(sparse_sizes) < 1.2
    dense, dense_sizes = simulate(adaptive(0.02), rate=3000)
    # 3000/s of 2.2 ms single calls would never keep up; batches do, within the target
    assert np.mean(dense_sizes) > 4 and np.percentile(dense, 99) < 0.02
    assert max(dense_sizes) <= 64
    capped, capped_sizes = simulate(adaptive(0.02, max_batch_size=8), rate=3000)
    assert max(capped_sizes) <= 8


def test_the_target_can_be_switched_on_and_off_live() -> None:
    async def main() -> tuple[Any, ...]:
        async def identity(items: list[int]) -> list[int]:
            return items

        batcher = Batcher(identity, 8, 10.0)
        batcher.set_latency_target_s(0.02)  # the 10 s fixed wait no longer applies
        first = await asyncio.wait_for(batcher(1), 1.0)
        on = batcher.policy
        batcher.set_latency_target_s(0.03)
        assert batcher.policy is on and on.target_s == 0.03  # retargeted, keeps what it learnt
        batcher.set_latency_target_s(None)
        batcher.set_batch_wait_timeout_s(0.001)
        return first, on.state()["calls_observed"], batcher.policy, await batcher(2)

    assert run_sim(main()) == (1, 1, None, 2)


def test_waits_that_gather_nothing_stop_then_get_retried_now_and_then() -> None:
    policy = LatencyTarget(0.02, 64)
    last = trained(policy, rate=2000)
    assert policy.plan(last + 0.0005, 3, 3, 0)[0] > 0
    for _ in range(5):  # a closed-loop client with every request queued: nothing more comes
        policy.on_wait(policy.wait_rate, 0.001, gained=0)
    assert policy.wait_yield < 0.5
    plans = [policy.plan(last + 0.0005, 3, 3, 0)[0] for _ in range(30)]
    assert plans[0] == 0 and any(w > 0 for w in plans)  # skipped, then tried again
