"""The reconciler over a backlog: a keyset pass whose rate does not depend on the backlog,
newly due orders reached while it drains, and replies that change nothing counted, not stored."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from receiver.config import Config, ReconcileConfig
from receiver.core.notification import Status
from receiver.gateways import OrderRef, QueryAnswer, QueryResult
from receiver.gateways.gopay import GoPayGateway
from receiver.gateways.queriers import build_queriers
from receiver.sources.reconcile import Reconciler
from receiver.store.database import create_pool
from receiver.store.ledger import Ledger
from tests.conftest import BAOFOO_MEMBER
from tests.support.fake_querier import FakeQuerier, gopay_answer, plain_answer
from tests.support.gopay_signer import GoPaySigner, new_rsa_key
from tests.support.stand_in import start_stand_in

# No pacing: these tests are about the pass itself (the keyset, the claims), not about
# `max_per_second`, which would hold a 3,000-order pass to 8 queries a second.
SCHEDULE = ReconcileConfig(
    first_after_s=300,
    intervals_s=(300, 600),
    give_up_after_s=86400,
    timeout_s=2,
    concurrency=8,
    max_per_second=1_000_000,
)

# Orders created `age` ago, as a merchant's checkout inserts them (the trigger gives each its
# order_queries row).
INSERT_DUE = """
INSERT INTO orders (provider, merchant_id, out_trade_no, amount_minor, currency, created_at)
SELECT $1, $2, $3 || g, 10000, 'CNY', now() - $5::interval
FROM generate_series(1, $4::int) AS g
"""


@pytest.fixture
async def pool(db: asyncpg.Connection, migrated: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(migrated, min_size=1, max_size=10)
    yield p
    await p.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def reconciler(
    pool: asyncpg.Pool,
    session: aiohttp.ClientSession,
    querier: Any,
    *,
    config: ReconcileConfig = SCHEDULE,
) -> Reconciler:
    return Reconciler(
        pool=pool,
        ledger=Ledger(pool),
        queriers={querier.provider: querier},
        session=session,
        config=config,
    )


async def insert_due(
    db: asyncpg.Connection, prefix: str, count: int, *, provider: str = "gopay", age_s: int = 400
) -> None:
    merchant = "100001" if provider == "gopay" else BAOFOO_MEMBER
    await db.execute(INSERT_DUE, provider, merchant, prefix, count, timedelta(seconds=age_s))


async def queries_row(db: asyncpg.Connection, out_trade_no: str) -> asyncpg.Record:
    return await db.fetchrow(
        "SELECT q.attempts, q.unstored, q.last_result, q.last_outcome, q.last_notification_id"
        " FROM order_queries q JOIN orders o ON o.id = q.order_id WHERE o.out_trade_no = $1",
        out_trade_no,
    )


async def test_a_still_pending_reply_is_counted_in_order_queries_and_not_stored(
    db, pool, session, config: Config, signer
):
    gopay = GoPayGateway.from_config(config.gopay, source="tests")
    await insert_due(db, "N", 1)
    rec = reconciler(pool, session, FakeQuerier("gopay", gopay_answer(gopay, signer, "pending")))
    [report] = await rec.run_pass()
    assert (report.result, report.outcome, report.notification_id) == ("pending", "noop", None)
    await db.execute("UPDATE order_queries SET next_at = now()")  # its next interval came
    [again] = await rec.run_pass()
    assert again.outcome == "noop"
    assert await db.fetchval("SELECT count(*) FROM notifications") == 0
    assert tuple(await queries_row(db, "N1")) == (2, 2, "pending", "noop", None)


async def test_a_reply_with_the_status_the_order_has_is_counted_and_not_stored(
    db, pool, session, config: Config, signer
):
    gopay = GoPayGateway.from_config(config.gopay, source="tests")
    await insert_due(db, "D", 1)
    await db.execute("UPDATE orders SET status = 'failed'")
    rec = reconciler(pool, session, FakeQuerier("gopay", gopay_answer(gopay, signer, "failed")))
    report = await rec.query_now("gopay", "100001", "D1")
    assert (report.result, report.outcome, report.notification_id) == ("failed", "duplicate", None)
    assert await db.fetchval("SELECT count(*) FROM notifications") == 0
    assert tuple(await queries_row(db, "D1")) == (1, 1, "failed", "duplicate", None)


async def test_a_reply_that_changes_the_order_is_stored_and_named_in_order_queries(
    db, pool, session, config: Config, signer
):
    gopay = GoPayGateway.from_config(config.gopay, source="tests")
    await insert_due(db, "P", 1)
    rec = reconciler(pool, session, FakeQuerier("gopay", gopay_answer(gopay, signer, "paid")))
    [report] = await rec.run_pass()
    stored = await db.fetchrow("SELECT id, source, outcome FROM notifications")
    assert (stored["source"], stored["outcome"]) == ("query", "applied")
    assert report.notification_id == stored["id"]
    assert tuple(await queries_row(db, "P1")) == (1, 0, "paid", "applied", stored["id"])


async def test_a_refused_reply_is_stored_as_today(db, pool, session, config: Config, signer):
    gopay = GoPayGateway.from_config(config.gopay, source="tests")
    await insert_due(db, "F", 1)
    forger = GoPaySigner(new_rsa_key())
    rec = reconciler(pool, session, FakeQuerier("gopay", gopay_answer(gopay, forger, "paid")))
    [report] = await rec.run_pass()
    assert report.outcome == "bad_signature"
    assert await db.fetchval("SELECT outcome FROM notifications") == "bad_signature"
    assert (await queries_row(db, "F1"))["unstored"] == 0


class Inflow(FakeQuerier):
    """Answers not-found; while answering, a checkout inserts new orders that are already due."""

    def __init__(self, db: asyncpg.Connection, *, every: int, limit: int) -> None:
        super().__init__("gopay", plain_answer(QueryResult.NOT_FOUND, ""))
        self.db, self.every, self.limit, self.added = db, every, limit, 0
        self.lock = asyncio.Lock()

    async def query(
        self, session: aiohttp.ClientSession, order: OrderRef, *, timeout_s: float
    ) -> QueryAnswer:
        answer = await super().query(session, order, timeout_s=timeout_s)
        if len(self.asked) % self.every == 0:
            async with self.lock:  # one connection, shared by the concurrent queries
                if self.added < self.limit:
                    self.added += 1
                    await insert_due(self.db, f"NEW{self.added}-", 1, age_s=301)
        return answer


async def test_orders_that_come_due_while_a_backlog_drains_are_reached_by_that_pass(
    db, pool, session
):
    await insert_due(db, "B", 200)
    querier = Inflow(db, every=40, limit=3)
    async with asyncio.timeout(60):
        reports = await reconciler(pool, session, querier).run_pass()
    assert len(reports) == len({r.order_id for r in reports}) == 203  # each once
    asked = querier.asked  # in the order they were asked
    assert sorted(n for n in asked if n.startswith("NEW")) == ["NEW1-1", "NEW2-1", "NEW3-1"]
    # The backlog first (it was due first), the newcomers after, in due order.
    assert asked.index("NEW1-1") > max(asked.index(f"B{i}") for i in range(1, 201))


async def test_a_pass_under_an_endless_inflow_ends_once_it_has_gone_round(db, pool, session):
    quick = replace(SCHEDULE, intervals_s=(2,))  # a claimed order is due again 2 s later
    await insert_due(db, "B", 20)
    querier = Inflow(db, every=1, limit=10**9)  # every query brings a new due order
    started = time.monotonic()
    async with asyncio.timeout(60):
        reports = await reconciler(pool, session, querier, config=quick).run_pass()
    asked = [r.out_trade_no for r in reports]
    assert len(asked) == len(set(asked))  # never an order twice in one pass
    assert querier.added > 0 and time.monotonic() - started < 30


async def pass_rate(
    db: asyncpg.Connection, pool: asyncpg.Pool, session: aiohttp.ClientSession, live: Config, n: int
) -> float:
    """Orders queried a second by one pass over `n` due orders (the stand-in says pending)."""
    await db.execute("TRUNCATE orders RESTART IDENTITY CASCADE")
    await insert_due(db, f"R{n}-", n, provider="baofoo")
    queriers = build_queriers(live)
    rec = Reconciler(
        pool=pool, ledger=Ledger(pool), queriers=queriers, session=session, config=SCHEDULE
    )
    started = time.perf_counter()
    reports = await rec.run_pass()
    elapsed = time.perf_counter() - started
    assert len(reports) == n and {r.outcome for r in reports} == {"noop"}
    return n / elapsed


@pytest.mark.slow
async def test_a_pass_over_a_large_backlog_queries_as_fast_as_over_a_small_one(
    db, pool, session, config: Config, aiohttp_server, gopay_key, baofoo_md5_key, tmp_path: Path
):
    stand_in = await start_stand_in(aiohttp_server, platform_key=gopay_key, md5_key=baofoo_md5_key)
    live = replace(
        config,
        baofoo=replace(config.baofoo, query_url=f"{stand_in.base_url}/order/query"),
        reconcile=SCHEDULE,
    )
    small, large = 300, 3000
    for n in (100, small, large):
        for i in range(1, n + 1):
            stand_in.pay("baofoo", f"R{n}-{i}", status=Status.PENDING)
    await pass_rate(db, pool, session, live, 100)  # warm up connections and plans
    small_rate = await pass_rate(db, pool, session, live, small)
    large_rate = await pass_rate(db, pool, session, live, large)
    # The benchmark holds the 20% target at 100,000; here, on a shared machine, a looser bound
    # still tells a per-order cost that grows with the backlog from one that does not.
    assert large_rate >= 0.7 * small_rate, (small_rate, large_rate)
    assert await db.fetchval("SELECT count(*) FROM notifications") == 0
