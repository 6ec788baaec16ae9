"""The ledger: the only place that writes orders, notifications and order_events.

One transaction per notification: the raw notification, the order lookup, the amount check,
the conditional (optimistic-lock) status update, the event row and its NOTIFY commit together
or not at all. Callers reply only after `apply` or `reject` returns.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import asyncpg

from receiver.database import CONNECTION_ERRORS, describe_connection_error
from receiver.errors import DatabaseUnavailable, Rejected
from receiver.notification import (
    Inbound,
    Notification,
    Outcome,
    Status,
    Transition,
    check_amount,
    decide_transition,
    is_identifier,
)

SELECT_ORDER = """
SELECT id, status, amount_minor, currency, channel
FROM orders
WHERE provider = $1 AND merchant_id = $2 AND out_trade_no = $3
"""

SELECT_ORDER_STATUS = "SELECT status FROM orders WHERE id = $1"

# The optimistic lock: the row moves only if nobody moved it since we read it.
UPDATE_ORDER = """
UPDATE orders
SET status = $3,
    needs_review = needs_review OR $4,
    paid_amount_minor = CASE WHEN $3 = 'paid' THEN $5 ELSE paid_amount_minor END,
    paid_at = CASE WHEN $3 = 'paid' THEN coalesce($6, now()) ELSE paid_at END,
    provider_trade_no = coalesce($7, provider_trade_no),
    updated_at = now()
WHERE id = $1 AND status = $2
RETURNING id
"""

INSERT_NOTIFICATION = """
INSERT INTO notifications
    (provider, remote_addr, headers, body, merchant_id, out_trade_no, outcome, detail, order_id)
VALUES ($1, $2, $3::jsonb, $4, $5, $6, $7, $8, $9)
RETURNING id
"""

INSERT_EVENT = """
INSERT INTO order_events (order_id, from_status, to_status, notification_id)
VALUES ($1, $2, $3, $4)
RETURNING id
"""

NOTIFY_EVENT = "SELECT pg_notify('order_events', $1::text)"

# A nonce is a replay only if it was seen within the freshness window; older rows are pruned.
CLAIM_NONCE = """
INSERT INTO gopay_nonces (nonce) VALUES ($1)
ON CONFLICT (nonce) DO UPDATE SET seen_at = now()
    WHERE gopay_nonces.seen_at < now() - $2::interval
RETURNING nonce
"""
PRUNE_NONCES = "DELETE FROM gopay_nonces WHERE seen_at < now() - $1::interval"


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    """What the ledger committed for one notification."""

    outcome: Outcome
    notification_id: int
    merchant_id: str | None = None
    out_trade_no: str | None = None
    order_id: int | None = None
    from_status: Status | None = None
    to_status: Status | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class _Decision:
    outcome: Outcome
    order_id: int | None = None
    from_status: Status | None = None
    to_status: Status | None = None
    detail: str = ""


class Ledger:
    """Writes notifications and moves orders, one transaction per notification."""

    def __init__(self, pool: asyncpg.Pool, *, nonce_window_s: int = 900) -> None:
        self._pool = pool
        self._nonce_window = timedelta(seconds=max(nonce_window_s, 1) * 2)

    async def apply(self, inbound: Inbound, n: Notification) -> Result:
        """Record a verified notification and move its order forward at most once."""
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                decision = await self._decide_and_move(conn, n)
                nid = await self._insert_notification(conn, inbound, n, decision)
                if decision.to_status is not None:
                    await self._insert_event(conn, decision, nid)
        except CONNECTION_ERRORS as exc:
            raise DatabaseUnavailable(describe_connection_error(exc)) from exc
        return Result(
            outcome=decision.outcome,
            notification_id=nid,
            merchant_id=n.merchant_id,
            out_trade_no=n.out_trade_no,
            order_id=decision.order_id,
            from_status=decision.from_status,
            to_status=decision.to_status,
            detail=decision.detail,
        )

    async def reject(self, inbound: Inbound, rejected: Rejected) -> Result:
        """Record a refused notification with its outcome and reason."""
        decision = _Decision(rejected.outcome, detail=rejected.reason)
        try:
            async with self._pool.acquire() as conn:
                nid = await conn.fetchval(
                    INSERT_NOTIFICATION,
                    *_notification_row(
                        inbound,
                        decision,
                        headers={},
                        merchant_id=_storable(rejected.merchant_id),
                        out_trade_no=_storable(rejected.out_trade_no),
                    ),
                )
        except CONNECTION_ERRORS as exc:
            raise DatabaseUnavailable(describe_connection_error(exc)) from exc
        return Result(
            outcome=rejected.outcome,
            notification_id=nid,
            merchant_id=rejected.merchant_id,
            out_trade_no=rejected.out_trade_no,
            detail=rejected.reason,
        )

    async def prune_nonces(self) -> int:
        """Forget nonces older than the replay window; returns how many went."""
        try:
            async with self._pool.acquire() as conn:
                status = await conn.execute(PRUNE_NONCES, self._nonce_window)
        except CONNECTION_ERRORS as exc:
            raise DatabaseUnavailable(describe_connection_error(exc)) from exc
        return int(status.split()[-1])

    async def _decide_and_move(self, conn: asyncpg.Connection, n: Notification) -> _Decision:
        if n.nonce is not None and not await self._claim_nonce(conn, n.nonce):
            return _Decision(Outcome.REPLAYED, detail="nonce already seen")
        order = await conn.fetchrow(SELECT_ORDER, n.provider, n.merchant_id, n.out_trade_no)
        if order is None:
            return _Decision(Outcome.UNKNOWN_ORDER, detail="no such order")
        mismatch = check_amount(
            n,
            amount_minor=order["amount_minor"],
            currency=order["currency"],
            channel=order["channel"],
        )
        if mismatch is not None:
            return _Decision(mismatch, order["id"], detail=_mismatch_detail(n, order))
        return await self._move(conn, n, order_id=order["id"], current=Status(order["status"]))

    async def _claim_nonce(self, conn: asyncpg.Connection, nonce: str) -> bool:
        return await conn.fetchval(CLAIM_NONCE, nonce, self._nonce_window) is not None

    async def _move(
        self, conn: asyncpg.Connection, n: Notification, *, order_id: int, current: Status
    ) -> _Decision:
        # Another transaction may move the order between our read and our update; then the
        # update touches no row, and we decide again against the status it left behind.
        while True:
            t = decide_transition(current, n.target)
            if t.new_status is None:
                return _Decision(t.outcome, order_id, current, None)
            if await self._conditional_update(conn, n, order_id=order_id, current=current, t=t):
                return _Decision(t.outcome, order_id, current, t.new_status)
            current = Status(await conn.fetchval(SELECT_ORDER_STATUS, order_id))

    async def _conditional_update(
        self,
        conn: asyncpg.Connection,
        n: Notification,
        *,
        order_id: int,
        current: Status,
        t: Transition,
    ) -> bool:
        assert t.new_status is not None
        row = await conn.fetchval(
            UPDATE_ORDER,
            order_id,
            current.value,
            t.new_status.value,
            t.outcome is Outcome.APPLIED_LATE,
            n.paid_amount_minor,
            n.paid_at,
            n.provider_trade_no,
        )
        return row is not None

    async def _insert_notification(
        self, conn: asyncpg.Connection, inbound: Inbound, n: Notification, d: _Decision
    ) -> int:
        detail = "; ".join(x for x in (n.detail, d.detail) if x)
        row = _notification_row(
            inbound,
            _Decision(d.outcome, d.order_id, d.from_status, d.to_status, detail),
            headers=n.signed_headers,
            merchant_id=n.merchant_id,
            out_trade_no=n.out_trade_no,
        )
        nid: int = await conn.fetchval(INSERT_NOTIFICATION, *row)
        return nid

    async def _insert_event(self, conn: asyncpg.Connection, d: _Decision, nid: int) -> None:
        assert d.from_status is not None and d.to_status is not None
        event_id = await conn.fetchval(
            INSERT_EVENT, d.order_id, d.from_status.value, d.to_status.value, nid
        )
        await conn.execute(NOTIFY_EVENT, str(event_id))


def _notification_row(
    inbound: Inbound,
    d: _Decision,
    *,
    headers: Mapping[str, str],
    merchant_id: str | None,
    out_trade_no: str | None,
) -> tuple[object, ...]:
    return (
        inbound.provider,
        inbound.remote_addr,
        json.dumps(dict(headers)),
        inbound.body,
        merchant_id,
        out_trade_no,
        d.outcome.value,
        d.detail,
        d.order_id,
    )


def _storable(hint: str | None) -> str | None:
    # A refused notification's identifiers are unverified: keep them only if they can be stored.
    return hint if hint is not None and is_identifier(hint) else None


def _mismatch_detail(n: Notification, order: asyncpg.Record) -> str:
    return (
        f"order {order['amount_minor']} {order['currency']}"
        f"{' channel ' + order['channel'] if order['channel'] else ''}; "
        f"notification amount {n.order_amount_minor} paid {n.paid_amount_minor} {n.currency}"
    )


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
       outcome, detail, order_id
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
