"""``maas.serving.batching.Batcher``: concurrent calls gathered into few batch calls, in order."""

import asyncio
from typing import Any

import pytest

from maas.serving.batching import Batcher


def test_concurrent_calls_share_batches_and_get_their_own_results() -> None:
    calls: list[list[int]] = []

    async def double(items: list[int]) -> list[int]:
        calls.append(list(items))
        return [2 * i for i in items]

    async def main() -> list[int]:
        batcher = Batcher(double, max_batch_size=4, batch_wait_timeout_s=0.05)
        return await asyncio.gather(*[batcher(i) for i in range(10)])

    assert asyncio.run(main()) == [2 * i for i in range(10)]
    assert [len(c) for c in calls] == [4, 4, 2]


def test_a_lone_call_waits_at_most_the_timeout_and_settings_change_live() -> None:
    async def identity(items: list[Any]) -> list[Any]:
        return items

    async def main() -> tuple[Any, Any]:
        batcher = Batcher(identity, max_batch_size=32, batch_wait_timeout_s=10.0)
        batcher.set_batch_wait_timeout_s(0.001)
        batcher.set_max_batch_size(2)
        first = await asyncio.wait_for(batcher("a"), 1.0)
        return first, await asyncio.gather(batcher("b"), batcher("c"), batcher("d"))

    assert asyncio.run(main()) == ("a", ["b", "c", "d"])


def test_an_error_in_the_batch_call_reaches_every_caller_and_the_batcher_goes_on() -> None:
    async def fail_once(items: list[int]) -> list[int]:
        if 0 in items:
            raise ValueError("boom")
        return items

    async def main() -> Any:
        batcher = Batcher(fail_once, max_batch_size=8, batch_wait_timeout_s=0.01)
        results = await asyncio.gather(batcher(0), batcher(1), return_exceptions=True)
        assert all(isinstance(r, ValueError) for r in results)
        return await batcher(5)

    assert asyncio.run(main()) == 5


def test_a_cancelled_caller_does_not_break_the_others() -> None:
    async def identity(items: list[int]) -> list[int]:
        return items

    async def main() -> Any:
        batcher = Batcher(identity, max_batch_size=8, batch_wait_timeout_s=0.02)
        gone = asyncio.ensure_future(batcher(1))
        stays = asyncio.ensure_future(batcher(2))
        await asyncio.sleep(0)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        return await stays

    assert asyncio.run(main()) == 2
