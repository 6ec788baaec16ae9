"""The event feed's cursor never skips an event whose transaction commits late."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from receiver.events.feed import BEGINNING, Cursor, EventFilter, cursor_of, event_body, read_after
from tests.events_support import read_visible, write_event
from tests.support.db import database_url

MakeOrder = Callable[..., Awaitable[asyncpg.Record]]


async def test_a_held_transaction_delays_readers_and_is_never_skipped(
    db: asyncpg.Connection, migrated: str, make_order: MakeOrder
) -> None:
    first = await make_order("HELD-1")
    second = await make_order("LATER-2")
    writer_a = await asyncpg.connect(migrated)
    try:
        held = writer_a.transaction()
        await held.start()
        held_id = await write_event(writer_a, first["id"])
        later_id = await write_event(db, second["id"])  # commits at once
        assert later_id > held_id
        # A reader by id alone would see the later event now and pass over the held one.
        assert await db.fetchval("SELECT max(id) FROM order_events") == later_id
        assert await read_after(db, BEGINNING) == []
        await held.commit()
    finally:
        await writer_a.close()
    rows = await read_visible(db, BEGINNING, count=2)
    assert [r["id"] for r in rows] == [held_id, later_id]
    assert await read_after(db, cursor_of(rows[-1])) == []


async def test_events_after_a_cursor_are_read_in_order_and_filtered(
    db: asyncpg.Connection, make_order: MakeOrder
) -> None:
    gopay = await make_order("G-1")
    baofoo = await make_order("B-1", provider="baofoo")
    ids = [
        await write_event(db, gopay["id"]),
        await write_event(db, baofoo["id"], to_status="closed"),
    ]
    rows = await read_visible(db, BEGINNING, count=2)
    assert [r["id"] for r in rows] == ids
    assert [r["id"] for r in await read_after(db, cursor_of(rows[0]))] == ids[1:]
    only_baofoo = await read_after(db, BEGINNING, wanted=EventFilter(provider="baofoo"))
    assert [r["id"] for r in only_baofoo] == ids[1:]
    only_paid = await read_after(db, BEGINNING, wanted=EventFilter(type="order.paid"))
    assert [r["id"] for r in only_paid] == ids[:1]


async def test_the_event_body_carries_amounts_as_decimal_strings_and_its_cursor(
    db: asyncpg.Connection, make_order: MakeOrder
) -> None:
    order = await make_order("G-2", amount_minor=12345)
    event_id = await write_event(db, order["id"])
    (row,) = await read_visible(db, BEGINNING, count=1)
    body = event_body(row)
    assert body["type"] == "order.paid" and body["id"] == str(event_id)
    data = body["data"]
    assert data["amount"] == "123.45" and data["paid_amount"] == "123.45"
    assert (data["from_status"], data["to_status"], data["status"]) == ("pending", "paid", "paid")
    assert data["out_trade_no"] == "G-2" and data["source"] == "notify"
    assert Cursor.parse(data["cursor"]) == cursor_of(row)


@pytest.mark.parametrize("text", ["", "5", "a:b", "1:-2", "1:2:3", "99999999999999999999999:1"])
def test_a_malformed_cursor_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not a cursor"):
        Cursor.parse(text)


async def test_the_query_users_are_given_reads_the_feed_as_the_receiver_does(
    db: asyncpg.Connection, make_order: MakeOrder
) -> None:
    docs = (Path(__file__).parent.parent / "docs" / "events.md").read_text()
    query = docs.split("```sql\n", 1)[1].split("```", 1)[0]
    orders = [await make_order(f"Q{i}") for i in range(3)]
    ids = [await write_event(db, o["id"]) for o in orders]
    rows = await read_visible(db, BEGINNING, count=3)
    assert [r["id"] for r in rows] == ids
    first = cursor_of(rows[0])
    given = await db.fetch(query, str(first.xid), first.event_id)
    assert [r["id"] for r in given] == ids[1:]


async def test_a_transaction_of_another_database_does_not_hold_the_feed_back(
    db: asyncpg.Connection, migrated: str, make_order: MakeOrder
) -> None:
    # A database of its own on the same server (the embedded server's tests run in "postgres").
    name = f"receiver_other_{os.getpid()}"
    await db.execute(f'DROP DATABASE IF EXISTS "{name}"')
    await db.execute(f'CREATE DATABASE "{name}"')
    other = await asyncpg.connect(database_url(migrated, name))
    try:
        await other.execute("CREATE TEMP TABLE busy (x int)")
        held = other.transaction()
        await held.start()
        await other.execute("INSERT INTO busy VALUES (1)")  # holds a transaction id
        event_id = await write_event(db, (await make_order("OTHER-DB"))["id"])
        rows = await read_visible(db, BEGINNING, count=1, wait_s=10.0)
        assert [r["id"] for r in rows] == [event_id]
        await held.rollback()
    finally:
        await other.close()
        await db.execute(f'DROP DATABASE IF EXISTS "{name}"')
