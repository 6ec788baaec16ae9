"""How fast the reconciler may ask one gateway: `reconcile.max_per_second`, slower when told.

GoPay refuses more than 10 requests a second from one address (error_code 100003); each process
keeps under its own limit per gateway, and halves its pace for every `limited` answer until the
gateway answers normally again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from receiver.gateways import QueryResult

SLOWEST_INTERVAL_S = 10.0  # however often the gateway says "too many", one query per 10 s


class Pacer:
    """Spaces the starts of one gateway's queries at least `1 / per_second` apart."""

    def __init__(
        self,
        per_second: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.base_interval_s = 1.0 / per_second
        self.interval_s = self.base_interval_s
        self._clock = clock
        self._sleep = sleep
        self._next = clock()

    async def wait(self) -> None:
        """Return when the next query may start (each caller gets its own slot in time)."""
        now = self._clock()
        start = max(now, self._next)
        self._next = start + self.interval_s
        if start > now:
            await self._sleep(start - now)

    def answered(self, result: QueryResult) -> None:
        """Slow down after `limited` (twice the interval); speed back up after any other."""
        if result is QueryResult.LIMITED:
            self.interval_s = min(self.interval_s * 2, SLOWEST_INTERVAL_S)
        else:
            self.interval_s = max(self.interval_s / 2, self.base_interval_s)
