"""Assertions on what the service stored."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import asyncpg


async def order_row(db: asyncpg.Connection, out_trade_no: str) -> asyncpg.Record:
    """The order with this out_trade_no (any provider)."""
    return await db.fetchrow("SELECT * FROM orders WHERE out_trade_no = $1", out_trade_no)


async def outcomes(db: asyncpg.Connection) -> list[str]:
    """The outcome of every stored notification, oldest first."""
    return [r["outcome"] for r in await db.fetch("SELECT outcome FROM notifications ORDER BY id")]


async def events(db: asyncpg.Connection, order_id: int) -> list[tuple[str, str]]:
    """The (from_status, to_status) of each event of an order, in order."""
    rows = await db.fetch(
        "SELECT from_status, to_status FROM order_events WHERE order_id = $1 ORDER BY id", order_id
    )
    return [(r["from_status"], r["to_status"]) for r in rows]


def database_url(url: str, name: str) -> str:
    """`url` pointing at database `name` on the same server (TCP, or a socket in the query)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))
