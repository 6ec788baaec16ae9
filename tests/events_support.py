"""Helpers for the event tests: write events the way a writer's transaction does."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg

from receiver.events.feed import Cursor, read_after

INSERT_NOTIFICATION = """
INSERT INTO notifications (provider, body, merchant_id, out_trade_no, outcome, order_id)
SELECT provider, '\\x'::bytea, merchant_id, out_trade_no, 'applied', id FROM orders WHERE id = $1
RETURNING id
"""
MOVE_ORDER = "UPDATE orders SET status = $2, paid_amount_minor = amount_minor WHERE id = $1"
INSERT_EVENT = """
INSERT INTO order_events (order_id, from_status, to_status, notification_id)
VALUES ($1, $2, $3, $4) RETURNING id
"""


async def write_event(
    conn: asyncpg.Connection,
    order_id: int,
    *,
    to_status: str = "paid",
    from_status: str = "pending",
) -> int:
    """Move an order and write its event on `conn` (in whatever transaction it has open)."""
    nid = await conn.fetchval(INSERT_NOTIFICATION, order_id)
    await conn.execute(MOVE_ORDER, order_id, to_status)
    event_id: int = await conn.fetchval(INSERT_EVENT, order_id, from_status, to_status, nid)
    return event_id


async def read_visible(
    conn: asyncpg.Connection, after: Cursor, *, count: int, wait_s: float = 30.0, **kw: Any
) -> list[asyncpg.Record]:
    """The feed after `after`, once it shows `count` events: the horizon is the whole server's
    oldest running transaction, and other databases on a shared test server may hold it back."""
    deadline = time.monotonic() + wait_s
    while True:
        rows = await read_after(conn, after, **kw)
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.05)
