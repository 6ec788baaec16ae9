"""Operators' queries: stuck and flagged orders, resolving a flag, stored notifications.

Read-only except `resolve_order`, which clears `needs_review` and keeps the note and when.
Newest first; the command line prints each row as one JSON line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

import asyncpg

# $4 is the overdue age (reconcile.first_after_s) or NULL; $5 the --older-than age or NULL.
SELECT_ORDERS = """
SELECT id, provider, merchant_id, out_trade_no, amount_minor, currency, status,
       paid_amount_minor, provider_trade_no, paid_at, needs_review, channel, created_at,
       updated_at, review_note, reviewed_at
FROM orders
WHERE ($1::text IS NULL OR provider = $1)
  AND ($2::text IS NULL OR status = $2)
  AND (NOT $3::boolean OR needs_review)
  AND ($4::interval IS NULL OR (status = 'pending' AND created_at <= now() - $4::interval))
  AND ($5::interval IS NULL OR created_at <= now() - $5::interval)
ORDER BY id DESC
LIMIT $6
"""

RESOLVE_ORDER = """
UPDATE orders
SET needs_review = false, review_note = $4, reviewed_at = now(), updated_at = now()
WHERE provider = $1 AND merchant_id = $2 AND out_trade_no = $3
RETURNING id, provider, merchant_id, out_trade_no, amount_minor, currency, status,
          paid_amount_minor, provider_trade_no, paid_at, needs_review, channel, created_at,
          updated_at, review_note, reviewed_at
"""

SELECT_NOTIFICATIONS = """
SELECT id, provider, received_at, remote_addr, headers, merchant_id, out_trade_no, outcome,
       detail, order_id, source, replay_of
FROM notifications
WHERE ($1::text IS NULL OR provider = $1)
  AND ($2::text IS NULL OR outcome = $2)
  AND ($3::text IS NULL OR source = $3)
  AND ($4::interval IS NULL OR received_at >= now() - $4::interval)
ORDER BY id DESC
LIMIT $5
"""

_DURATION = re.compile(r"([0-9]{1,9})([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """A duration as SPEC writes it: a number with s, m, h or d (`90s`, `15m`, `3h`, `2d`)."""
    m = _DURATION.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not a duration like 90s, 15m, 3h or 2d")
    seconds = int(m.group(1)) * _UNIT_S[m.group(2)]
    if seconds > MAX_DURATION_S:
        # Beyond this, now() minus it leaves PostgreSQL's range of timestamps (or Python's).
        raise ValueError(f"{text!r} is out of range (at most {MAX_DURATION_S // 86400}d)")
    return timedelta(seconds=seconds)


MAX_DURATION_S = 36500 * 86400  # a hundred years


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderFilter:
    """`orders list` options; None means no condition."""

    provider: str | None = None
    status: str | None = None
    needs_review: bool = False
    overdue_after: timedelta | None = None  # pending and older than this
    older_than: timedelta | None = None
    limit: int = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class NotificationFilter:
    """`notifications list` options; None means no condition."""

    provider: str | None = None
    outcome: str | None = None
    source: str | None = None
    since: timedelta | None = None
    limit: int = 1000


async def list_orders(conn: asyncpg.Connection, f: OrderFilter) -> list[asyncpg.Record]:
    """Orders matching every given condition, newest first."""
    return list(
        await conn.fetch(
            SELECT_ORDERS,
            f.provider,
            f.status,
            f.needs_review,
            f.overdue_after,
            f.older_than,
            f.limit,
        )
    )


async def resolve_order(
    conn: asyncpg.Connection, *, provider: str, merchant_id: str, out_trade_no: str, note: str
) -> asyncpg.Record | None:
    """Clear an order's `needs_review`, keeping the note and the time; None: no such order."""
    row: asyncpg.Record | None = await conn.fetchrow(
        RESOLVE_ORDER, provider, merchant_id, out_trade_no, note
    )
    return row


async def list_notifications(
    conn: asyncpg.Connection, f: NotificationFilter
) -> list[asyncpg.Record]:
    """Stored notifications matching every given condition, newest first, without bodies."""
    return list(
        await conn.fetch(SELECT_NOTIFICATIONS, f.provider, f.outcome, f.source, f.since, f.limit)
    )
