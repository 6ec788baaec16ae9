"""One reconciliation pass in its own process, with a fake querier:
`python -m tests.support.reconcile_process DATABASE_URL` prints the out_trade_no of every order
it asked about."""

from __future__ import annotations

import asyncio
import json
import sys

import aiohttp

from receiver.config import ReconcileConfig
from receiver.gateways import OrderRef, QueryAnswer, QueryResult
from receiver.sources.reconcile import Reconciler
from receiver.store.database import create_pool
from receiver.store.ledger import Ledger
from tests.support.fake_querier import FakeQuerier


def not_found(_order: OrderRef) -> QueryAnswer:
    return QueryAnswer(result=QueryResult.NOT_FOUND, reason="")


async def one_pass(url: str) -> list[str]:
    pool = await create_pool(url, min_size=1, max_size=2)
    querier = FakeQuerier("gopay", not_found, delay_s=0.01)  # a moment, so the passes overlap
    try:
        async with aiohttp.ClientSession() as session:
            reconciler = Reconciler(
                pool=pool,
                ledger=Ledger(pool),
                queriers={"gopay": querier},
                session=session,
                config=ReconcileConfig(first_after_s=300, concurrency=1),
            )
            await reconciler.run_pass()
    finally:
        await pool.close()
    return querier.asked


if __name__ == "__main__":
    print(json.dumps(asyncio.run(one_pass(sys.argv[1]))))
