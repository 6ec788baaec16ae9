"""The generic group commit: batches form while earlier ones are written, each caller hears back."""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple

import pytest

from receiver.store.batching import Batcher


class Item(NamedTuple):
    value: int
    future: asyncio.Future[Any]


class Bad(Exception):
    pass


class Writer:
    """Records each batch it is given; refuses any batch holding a negative value."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def write(self, items: list[Item]) -> list[int]:
        self.batches.append([item.value for item in items])
        await self.gate.wait()
        if any(item.value < 0 for item in items):
            raise Bad(f"bad batch {[item.value for item in items]}")
        return [item.value * 10 for item in items]


async def submit(batcher: Batcher[Item], value: int) -> Any:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    batcher.add(Item(value, future))
    return await future


async def test_items_that_wait_for_a_batch_in_flight_share_the_next_one_up_to_batch_max():
    writer = Writer()
    batcher: Batcher[Item] = Batcher(writer.write, batch_max=3, batch_concurrency=1)
    writer.gate.clear()
    first = asyncio.ensure_future(submit(batcher, 1))
    await asyncio.sleep(0)  # the lone first item is written at once
    rest = [asyncio.ensure_future(submit(batcher, v)) for v in range(2, 7)]
    await asyncio.sleep(0)
    writer.gate.set()
    assert await first == 10
    assert await asyncio.gather(*rest) == [20, 30, 40, 50, 60]
    assert writer.batches == [[1], [2, 3, 4], [5, 6]]


async def test_batch_concurrency_writes_that_many_batches_at_once():
    writer = Writer()
    batcher: Batcher[Item] = Batcher(writer.write, batch_max=2, batch_concurrency=2)
    writer.gate.clear()
    futures = [asyncio.ensure_future(submit(batcher, v)) for v in range(1, 6)]
    await asyncio.sleep(0.01)
    assert writer.batches == [[1], [2]]  # two in flight; the rest wait for one to finish
    writer.gate.set()
    assert await asyncio.gather(*futures) == [10, 20, 30, 40, 50]
    assert writer.batches == [[1], [2], [3, 4], [5]]


async def test_a_batch_failing_with_a_split_error_is_written_again_one_item_at_a_time():
    writer = Writer()
    batcher: Batcher[Item] = Batcher(
        writer.write, batch_max=8, batch_concurrency=1, split_on=(Bad,)
    )
    writer.gate.clear()
    first = asyncio.ensure_future(submit(batcher, 1))
    await asyncio.sleep(0)
    rest = [asyncio.ensure_future(submit(batcher, v)) for v in (2, -3, 4)]
    await asyncio.sleep(0)
    writer.gate.set()
    assert await first == 10
    results = await asyncio.gather(*rest, return_exceptions=True)
    assert results[0] == 20 and results[2] == 40
    assert isinstance(results[1], Bad) and str(results[1]) == "bad batch [-3]"
    assert writer.batches == [[1], [2, -3, 4], [2], [-3], [4]]


async def test_any_other_error_fails_every_item_of_its_batch_and_the_next_batch_still_runs():
    writer = Writer()
    batcher: Batcher[Item] = Batcher(writer.write, batch_max=8, batch_concurrency=1)
    writer.gate.clear()
    first = asyncio.ensure_future(submit(batcher, 1))
    await asyncio.sleep(0)
    bad = [asyncio.ensure_future(submit(batcher, v)) for v in (2, -3)]
    await asyncio.sleep(0)
    writer.gate.set()
    assert await first == 10
    for future in bad:
        with pytest.raises(Bad, match=r"bad batch \[2, -3\]"):
            await future
    assert await submit(batcher, 5) == 50
    assert writer.batches == [[1], [2, -3], [5]]
