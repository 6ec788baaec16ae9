"""Orders as a merchant's checkout creates them, and an order with its notifications.

Used by `receiver orders create` / `orders show` and the demo; the service itself never creates
orders (the ledger moves them).
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

INSERT_ORDER = """
INSERT INTO orders (provider, merchant_id, out_trade_no, amount_minor, currency, channel)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING *
"""

SELECT_ORDER_ROW = """
SELECT * FROM orders WHERE provider = $1 AND merchant_id = $2 AND out_trade_no = $3
"""

SELECT_ORDER_NOTIFICATIONS = """
SELECT id, provider, received_at, remote_addr, headers, body, merchant_id, out_trade_no,
       outcome, detail, order_id, source, replay_of
FROM notifications
WHERE provider = $1 AND merchant_id = $2 AND out_trade_no = $3
ORDER BY id
"""


class OrderExists(Exception):
    """An order with that provider, merchant and number is already there."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NewOrder:
    """A pending order as a merchant's checkout would create it."""

    provider: str
    merchant_id: str
    out_trade_no: str
    amount_minor: int
    currency: str = "CNY"
    channel: str | None = None


async def create_order(conn: asyncpg.Connection, order: NewOrder) -> asyncpg.Record:
    """Insert a pending order; raise OrderExists when its key is taken."""
    try:
        row: asyncpg.Record = await conn.fetchrow(
            INSERT_ORDER,
            order.provider,
            order.merchant_id,
            order.out_trade_no,
            order.amount_minor,
            order.currency,
            order.channel,
        )
    except asyncpg.UniqueViolationError:
        raise OrderExists(f"{order.provider} order {order.out_trade_no} exists") from None
    return row


async def find_order(
    conn: asyncpg.Connection, *, provider: str, merchant_id: str, out_trade_no: str
) -> tuple[asyncpg.Record | None, list[asyncpg.Record]]:
    """An order (or None) and every notification received for it."""
    order = await conn.fetchrow(SELECT_ORDER_ROW, provider, merchant_id, out_trade_no)
    notes = await conn.fetch(SELECT_ORDER_NOTIFICATIONS, provider, merchant_id, out_trade_no)
    return order, notes
