"""The event feed: `order_events` read after a cursor that never skips.

An event's id is drawn before its transaction commits, so ids commit out of order and
`WHERE id > last_id` can pass over an event whose transaction was still open. Each event also
keeps its writing transaction's id (`xid`, a `xid8`); the feed is ordered by (xid, id) and read
only below `receiver_event_horizon()`: `pg_snapshot_xmin(pg_current_snapshot())`, the oldest
transaction still running, not counting those of other databases on the server (see
sql/007_events.sql). Every transaction of this database below it has ended, so nothing can
appear later behind the cursor: a long transaction delays readers, it never makes them skip.

The cursor is written `XID:ID` (the last event read); `0:0` is the beginning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

# What an event carries (event_body), from order_events e, orders o and notifications n.
EVENT_COLUMNS = """
e.id, e.xid::text AS xid, e.order_id, e.from_status, e.to_status, e.notification_id,
e.created_at, o.provider, o.merchant_id, o.out_trade_no, o.amount_minor, o.paid_amount_minor,
o.currency, o.needs_review, o.provider_trade_no, n.source
"""

# $1, $2: the cursor; $3 provider or NULL; $4 to_status or NULL; $5 how many at most.
READ_EVENTS = f"""
SELECT {EVENT_COLUMNS}
FROM order_events e
JOIN orders o ON o.id = e.order_id
LEFT JOIN notifications n ON n.id = e.notification_id
WHERE (e.xid, e.id) > ($1::text::xid8, $2::bigint)
  AND e.xid < (SELECT receiver_event_horizon())
  AND ($3::text IS NULL OR o.provider = $3)
  AND ($4::text IS NULL OR e.to_status = $4)
ORDER BY e.xid, e.id
LIMIT $5
"""  # noqa: S608 - a constant column list, no value

TYPES = ("order.paid", "order.failed", "order.closed")
_CURSOR = re.compile(r"([0-9]{1,20}):([0-9]{1,19})")
_MAX_BIGINT = 2**63 - 1


@dataclass(frozen=True, slots=True, order=True)
class Cursor:
    """A position in the feed: the last event read (its transaction id, its id)."""

    xid: int = 0
    event_id: int = 0

    def __str__(self) -> str:
        return f"{self.xid}:{self.event_id}"

    @classmethod
    def parse(cls, text: str) -> Cursor:
        """`XID:ID` as printed in a `cursor` field; ValueError for anything else."""
        m = _CURSOR.fullmatch(text.strip())
        if m is None or int(m.group(1)) > 2**64 - 1 or int(m.group(2)) > _MAX_BIGINT:
            raise ValueError(
                f"{text!r} is not a cursor (XID:ID, as events print it; 0:0 is the start)"
            )
        return cls(int(m.group(1)), int(m.group(2)))


BEGINNING = Cursor()


def event_type(to_status: str) -> str:
    """`order.paid`, `order.failed`, `order.closed`."""
    return f"order.{to_status}"


def status_of_type(kind: str) -> str:
    """The to_status a type names (`order.paid` -> `paid`)."""
    return kind.removeprefix("order.")


def decimal_string(minor: int | None) -> str | None:
    """Minor units as a decimal string with two places (`10000` -> `"100.00"`)."""
    return None if minor is None else f"{Decimal(minor).scaleb(-2):.2f}"


def cursor_of(row: asyncpg.Record) -> Cursor:
    return Cursor(int(row["xid"]), int(row["id"]))


def event_body(row: asyncpg.Record) -> dict[str, Any]:
    """The event as forwarded and followed: `{"type", "id", "created_at", "data": {...}}`."""
    created: datetime = row["created_at"]
    return {
        "type": event_type(row["to_status"]),
        "id": str(row["id"]),
        "created_at": created.isoformat(),
        "data": {
            "provider": row["provider"],
            "merchant_id": row["merchant_id"],
            "out_trade_no": row["out_trade_no"],
            "amount": decimal_string(row["amount_minor"]),
            "paid_amount": decimal_string(row["paid_amount_minor"]),
            "currency": row["currency"],
            "status": row["to_status"],
            "from_status": row["from_status"],
            "to_status": row["to_status"],
            "needs_review": row["needs_review"],
            "provider_trade_no": row["provider_trade_no"],
            "source": row["source"],
            "notification_id": row["notification_id"],
            "cursor": str(cursor_of(row)),
        },
    }


@dataclass(frozen=True, slots=True, kw_only=True)
class EventFilter:
    """Which events a reader wants; None: all."""

    provider: str | None = None
    type: str | None = None


ALL = EventFilter()


async def read_after(
    conn: asyncpg.Connection,
    after: Cursor,
    *,
    wanted: EventFilter = EventFilter(),
    limit: int = 500,
) -> list[asyncpg.Record]:
    """Events after `after` that no running transaction can still precede, oldest first."""
    status = None if wanted.type is None else status_of_type(wanted.type)
    return list(
        await conn.fetch(
            READ_EVENTS, str(after.xid), after.event_id, wanted.provider, status, limit
        )
    )
