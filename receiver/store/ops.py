"""Operators' queries: stuck and flagged orders, resolving reviews, stored notifications.

Read-only except `resolve_reviews`, which closes the named reviews and keeps the note and when;
the trigger on reviews then recomputes `orders.needs_review` (see store/ledger.py: the ledger
moves orders, this only clears their flag).
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
       updated_at
FROM orders
WHERE ($1::text IS NULL OR provider = $1)
  AND ($2::text IS NULL OR status = $2)
  AND (NOT $3::boolean OR needs_review)
  AND ($4::interval IS NULL OR (status = 'pending' AND created_at <= now() - $4::interval))
  AND ($5::interval IS NULL OR created_at <= now() - $5::interval)
ORDER BY id DESC
LIMIT $6
"""

# Every review of the orders named, oldest first; $2: open ones only.
SELECT_REVIEWS = """
SELECT id, order_id, reason, detail, notification_id, opened_at, resolved_at, note
FROM reviews
WHERE order_id = ANY($1::bigint[]) AND (NOT $2::boolean OR resolved_at IS NULL)
ORDER BY order_id, id
"""

# Closes exactly the named reviews that are still open; the trigger on reviews recomputes
# orders.needs_review in the same transaction, seeing any review opened meanwhile.
RESOLVE_REVIEWS = """
UPDATE reviews
SET resolved_at = now(), note = $2
WHERE id = ANY($1::bigint[]) AND resolved_at IS NULL
RETURNING id, order_id, reason, detail, notification_id, opened_at, resolved_at, note
"""

SELECT_REVIEW_STATES = "SELECT id, resolved_at FROM reviews WHERE id = ANY($1::bigint[])"

REVIEW_FIELDS = ("id", "reason", "detail", "notification_id", "opened_at", "resolved_at", "note")

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


class NotOpen(Exception):
    """Some named reviews are not open (resolved already, or no such review): nothing changed."""


async def reviews_of(
    conn: asyncpg.Connection, order_ids: list[int], *, open_only: bool
) -> dict[int, list[dict[str, object]]]:
    """The orders' reviews (or only the open ones) by order id, each as `REVIEW_FIELDS`."""
    found: dict[int, list[dict[str, object]]] = {order_id: [] for order_id in order_ids}
    for row in await conn.fetch(SELECT_REVIEWS, order_ids, open_only):
        found[row["order_id"]].append({name: row[name] for name in REVIEW_FIELDS})
    return found


async def resolve_reviews(
    conn: asyncpg.Connection, *, review_ids: list[int], note: str
) -> list[asyncpg.Record]:
    """Close exactly the named reviews, all or none; NotOpen when one is not open."""
    wanted = sorted(set(review_ids))
    async with conn.transaction():
        closed = await conn.fetch(RESOLVE_REVIEWS, wanted, note)
        if len(closed) != len(wanted):
            raise NotOpen(await _why_not_open(conn, wanted, {r["id"] for r in closed}))
    return list(closed)


async def _why_not_open(conn: asyncpg.Connection, wanted: list[int], closed: set[int]) -> str:
    states = {r["id"]: r["resolved_at"] for r in await conn.fetch(SELECT_REVIEW_STATES, wanted)}
    missing = [str(i) for i in wanted if i not in states]
    resolved = [str(i) for i in wanted if i in states and i not in closed]
    parts = []
    if missing:
        parts.append(f"no review {', '.join(missing)}")
    if resolved:
        parts.append(f"review {', '.join(resolved)} is not open (resolved already)")
    return "; ".join(parts) + ": nothing changed"


async def list_notifications(
    conn: asyncpg.Connection, f: NotificationFilter
) -> list[asyncpg.Record]:
    """Stored notifications matching every given condition, newest first, without bodies."""
    return list(
        await conn.fetch(SELECT_NOTIFICATIONS, f.provider, f.outcome, f.source, f.since, f.limit)
    )
