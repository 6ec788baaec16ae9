"""Group commit: items that arrive together are written together, each caller told its own result.

Batches form while earlier ones are being written: an idle queue writes a lone item at once, and
under load an item waits at most for the batches in flight. The hot path per item is one list
append and one check (`add`); tasks are made per batch, never per item.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Generic, Protocol, TypeVar


class Pending(Protocol):
    """An item to write: it carries the future its caller awaits."""

    @property
    def future(self) -> asyncio.Future[Any]: ...


ItemT = TypeVar("ItemT", bound=Pending)

#: Writes a batch; returns one result per item, in order.
Write = Callable[[list[ItemT]], Awaitable[Sequence[object]]]


class Batcher(Generic[ItemT]):
    """Queues items and writes up to `batch_max` at a time, `batch_concurrency` batches at once.

    A batch that fails with one of `split_on` is written again one item at a time, so that one
    bad item cannot sink the others; any other error fails every item of the batch (a bug too:
    every caller must still hear back).
    """

    def __init__(
        self,
        write: Write[ItemT],
        *,
        batch_max: int,
        batch_concurrency: int,
        split_on: tuple[type[BaseException], ...] = (),
    ) -> None:
        self._write = write
        self._batch_max = batch_max
        self._concurrency = batch_concurrency
        self._split_on = split_on
        self._queue: list[ItemT] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, item: ItemT) -> None:
        """Queue `item`; its future is resolved once its batch is written."""
        self._queue.append(item)
        self._dispatch()

    def _dispatch(self) -> None:
        while self._queue and self._in_flight < self._concurrency:
            batch = self._queue[: self._batch_max]
            del self._queue[: self._batch_max]
            self._in_flight += 1
            task = asyncio.create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[ItemT]) -> None:
        try:
            await self._settle(batch)
        finally:
            self._in_flight -= 1
            self._dispatch()

    async def _settle(self, batch: list[ItemT]) -> None:
        try:
            results = await self._write(batch)
        except self._split_on as exc:
            if len(batch) == 1:
                fail(batch, exc)
            else:
                for item in batch:
                    await self._settle([item])
        except Exception as exc:  # every caller must still hear back
            fail(batch, exc)
        else:
            for item, result in zip(batch, results, strict=True):
                if not item.future.done():
                    item.future.set_result(result)


def fail(items: Iterable[Pending], exc: BaseException) -> None:
    """Fail every item not yet resolved with `exc`."""
    for item in items:
        if not item.future.done():
            item.future.set_exception(exc)
