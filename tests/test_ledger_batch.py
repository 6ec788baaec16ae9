"""The batched ledger: concurrent notifications share a transaction, each with its own outcome."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from receiver.core.notification import Inbound, Notification, Outcome, Status
from receiver.core.planning import OrderState, plan_batch
from receiver.store.database import create_pool
from receiver.store.ledger import Ledger
from receiver.store.literals import bool_array, int_array, text_array

M = "100001"


def note(out_trade_no: str, *, target: Status | None = Status.PAID, **kw) -> Notification:
    base = {
        "provider": "gopay",
        "merchant_id": M,
        "out_trade_no": out_trade_no,
        "target": target,
        "paid_amount_minor": 10000,
        "order_amount_minor": 10000,
        "currency": "CNY",
    }
    return Notification(**(base | kw))


def inbound(body: bytes = b"{}") -> Inbound:
    return Inbound("gopay", body, {}, "application/json", None, "127.0.0.1")


@pytest.fixture
async def pool(db, migrated) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(migrated, min_size=1, max_size=4)  # the service's own settings
    yield p
    await p.close()


async def test_the_pool_plans_the_ledgers_statements_generically(pool):
    # Custom plans would be made afresh for every batch, costing more than running it.
    async with pool.acquire() as conn:
        assert await conn.fetchval("SHOW plan_cache_mode") == "force_generic_plan"


async def apply_all(ledger: Ledger, notes: list[Notification]) -> list:
    return await asyncio.gather(
        *(ledger.apply(inbound(), n) for n in notes), return_exceptions=True
    )


async def transactions(db: asyncpg.Connection) -> list[int]:
    rows = await db.fetch("SELECT xmin::text::bigint AS x FROM notifications ORDER BY id")
    return [r["x"] for r in rows]


async def test_same_order_twice_in_one_batch_is_applied_then_duplicate(db, pool, make_order):
    await make_order("S1")
    # One writer: the first notification goes alone at once, the next three form one batch.
    ledger = Ledger(pool, batch_max=64, batch_concurrency=1)
    results = await apply_all(ledger, [note("S1"), note("S1"), note("S1"), note("S1")])
    assert [r.outcome for r in results] == [Outcome.APPLIED] + [Outcome.DUPLICATE] * 3
    assert await db.fetchval("SELECT count(*) FROM order_events") == 1
    xs = await transactions(db)
    assert len(set(xs)) == 2 and xs[1] == xs[2] == xs[3]  # the three shared one transaction


async def test_failed_then_paid_in_one_batch_moves_twice_with_review(db, pool, make_order):
    order = await make_order("S2")
    await make_order("S2-warm")
    ledger = Ledger(pool, batch_concurrency=1)
    failed = note("S2", target=Status.FAILED, paid_amount_minor=0)
    paid_at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    paid = note("S2", paid_at=paid_at, provider_trade_no="T-9")
    results = await apply_all(ledger, [note("S2-warm"), failed, paid])
    assert [r.outcome for r in results] == [Outcome.APPLIED, Outcome.APPLIED, Outcome.APPLIED_LATE]
    row = await db.fetchrow("SELECT * FROM orders WHERE id = $1", order["id"])
    assert (row["status"], row["needs_review"], row["paid_at"], row["provider_trade_no"]) == (
        "paid",
        True,
        paid_at,
        "T-9",
    )
    events = await db.fetch(
        "SELECT from_status, to_status, notification_id FROM order_events"
        " WHERE order_id = $1 ORDER BY id",
        order["id"],
    )
    assert [(e[0], e[1]) for e in events] == [("pending", "failed"), ("failed", "paid")]
    assert [e[2] for e in events] == [results[1].notification_id, results[2].notification_id]


async def test_unknown_order_and_mismatch_do_not_disturb_the_batch(db, pool, make_order):
    await make_order("S3")
    await make_order("S4")
    ledger = Ledger(pool, batch_concurrency=1)
    notes = [note("S3"), note("NONE"), note("S4", paid_amount_minor=1), note("S4")]
    results = await apply_all(ledger, notes)
    # S4's money is held once a mismatch is seen: the later "paid" is not credited either.
    assert [r.outcome for r in results] == [
        Outcome.APPLIED,
        Outcome.UNKNOWN_ORDER,
        Outcome.AMOUNT_MISMATCH,
        Outcome.AMOUNT_MISMATCH,
    ]
    statuses = await db.fetch("SELECT out_trade_no, status, needs_review FROM orders ORDER BY 1")
    assert [tuple(r) for r in statuses] == [("S3", "paid", False), ("S4", "pending", True)]
    reviews = await db.fetch("SELECT amount_minor, notification_id FROM reviews ORDER BY id")
    assert [tuple(r) for r in reviews] == [
        (1, results[2].notification_id),
        (10000, results[3].notification_id),
    ]


@pytest.mark.parametrize("unstorable", ["\u0000", "\udcff"])  # jsonb holds neither
async def test_a_row_the_database_refuses_fails_alone(db, pool, make_order, unstorable):
    await make_order("S5")
    await make_order("S6")
    await make_order("S7")
    ledger = Ledger(pool, batch_concurrency=1)
    bad = note("S6", signed_headers={"x": unstorable})  # the batch fails
    results = await apply_all(ledger, [note("S5"), note("S7"), bad, note("S6")])
    assert results[0].outcome is Outcome.APPLIED and results[1].outcome is Outcome.APPLIED
    assert isinstance(results[2], asyncpg.PostgresError)
    assert results[3].outcome is Outcome.APPLIED
    statuses = await db.fetch("SELECT out_trade_no, status FROM orders ORDER BY out_trade_no")
    assert [tuple(r) for r in statuses] == [("S5", "paid"), ("S6", "paid"), ("S7", "paid")]


async def test_nonce_twice_in_one_batch_is_a_replay(db, pool, make_order):
    await make_order("S8")
    await make_order("S9")
    ledger = Ledger(pool, batch_concurrency=1)
    notes = [note("S9"), note("S8", nonce="N" * 32), note("S8", nonce="N" * 32)]
    results = await apply_all(ledger, notes)
    assert [r.outcome for r in results] == [Outcome.APPLIED, Outcome.APPLIED, Outcome.REPLAYED]


async def test_batch_max_one_is_one_transaction_per_notification(db, pool, make_order):
    for i in range(5):
        await make_order(f"T{i}")
    ledger = Ledger(pool, batch_max=1, batch_concurrency=1)
    results = await apply_all(ledger, [note(f"T{i}") for i in range(5)])
    assert {r.outcome for r in results} == {Outcome.APPLIED}
    assert len(set(await transactions(db))) == 5


async def test_concurrent_batches_on_one_order_apply_once(db, pool, make_order):
    await make_order("C1")
    ledger = Ledger(pool, batch_max=4, batch_concurrency=4)
    results = await apply_all(ledger, [note("C1") for _ in range(40)])
    assert sorted(r.outcome for r in results) == [Outcome.APPLIED] + [Outcome.DUPLICATE] * 39
    assert await db.fetchval("SELECT count(*) FROM order_events") == 1


async def test_stored_headers_are_the_content_type_and_signed_headers(db, pool, make_order):
    await make_order("H1")
    ledger = Ledger(pool, batch_concurrency=1)
    request = Inbound(
        "gopay",
        b"{}",
        CIMultiDictProxy(CIMultiDict([("Content-Type", "application/json"), ("Host", "h")])),
        "application/json",
        None,
        "127.0.0.1",
    )
    signed = {"x-ca-signature": 'a"\\/é中😀\n', "x-ca-timestamp": "1"}
    await ledger.apply(request, note("H1", signed_headers=signed))
    stored = await db.fetchval("SELECT headers::text FROM notifications")
    assert json.loads(stored) == {"content-type": "application/json"} | signed


def test_plan_is_sequential_per_order():
    orders = {("gopay", M, "P1"): OrderState(1, Status.PENDING, 10000, "CNY", None)}
    plan = plan_batch(
        [note("P1", target=Status.CLOSED, paid_amount_minor=0), note("P1"), note("P1")],
        orders,
        seen=set(),
    )
    assert [d.outcome for d in plan.decisions] == [
        Outcome.APPLIED,
        Outcome.APPLIED_LATE,
        Outcome.DUPLICATE,
    ]
    move = plan.moves[1]
    assert (move.old_status, move.new_status, move.late) == (Status.PENDING, Status.PAID, True)


# What array literals must carry verbatim: their own syntax, whitespace, the word NULL, non-ASCII.
AWKWARD = [
    '"',
    "\\",
    ",",
    "{",
    "}",
    " ",
    "\t",
    "\n",
    "NULL",
    "null",
    "'",
    "a",
    "é",
    "中",
    "😀",
    "\x01",
]


def awkward_text(rng: random.Random) -> str | None:
    if rng.random() < 0.1:
        return None
    return "".join(rng.choice(AWKWARD) for _ in range(rng.randrange(5)))  # "" included


async def test_text_array_literals_round_trip_any_text(db):
    cases = [
        [],
        [None],
        [""],
        ["NULL", "null", None, ""],
        [' a "b" ', "c\\d", "{e,f}", "g\\", '\\"'],
    ]
    rng = random.Random(12)
    cases += [[awkward_text(rng) for _ in range(rng.randrange(20))] for _ in range(300)]
    echo = await db.prepare("SELECT $1::text::text[]")
    for values in cases:
        assert await echo.fetchval(text_array(values)) == values


async def test_int_and_bool_array_literals_round_trip(db):
    ints = [0, -1, 1, None, 2**63 - 1, -(2**63), 10000]
    assert await db.fetchval("SELECT $1::text::bigint[]", int_array(ints)) == ints
    assert await db.fetchval("SELECT $1::text::bigint[]", int_array([])) == []
    bools = [True, False, True]
    assert await db.fetchval("SELECT $1::text::boolean[]", bool_array(bools)) == bools


async def test_awkward_text_and_bytes_are_stored_verbatim(db, pool, make_order):
    order = await make_order('Q"1')
    await make_order("Q,2")
    ledger = Ledger(pool, batch_concurrency=1)
    odd = ' "NULL" \\ {a,b} é中 '
    body = bytes(range(256))
    results = await asyncio.gather(
        ledger.apply(inbound(), note("Q,2")),
        ledger.apply(inbound(body), note('Q"1', detail=odd, provider_trade_no=odd)),
        ledger.apply(inbound(), note("NULL", detail="NULL")),
    )
    assert [r.outcome for r in results] == [Outcome.APPLIED, Outcome.APPLIED, Outcome.UNKNOWN_ORDER]
    rows = await db.fetch("SELECT out_trade_no, detail, body FROM notifications ORDER BY id")
    assert [tuple(r) for r in rows] == [
        ("Q,2", "", b"{}"),
        ('Q"1', odd, body),
        ("NULL", "NULL; no such order", b"{}"),
    ]
    stored = await db.fetchval("SELECT provider_trade_no FROM orders WHERE id = $1", order["id"])
    assert stored == odd
