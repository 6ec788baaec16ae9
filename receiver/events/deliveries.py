"""Operators' view of forwarding: `deliveries list` and `deliveries retry`."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

STATES = ("pending", "delivered", "failed")

LIST = """
SELECT event_id, destination, state, attempts, next_at, last_status, last_error, delivered_at,
       updated_at, last_request, last_reply
FROM deliveries
WHERE ($1::text IS NULL OR destination = $1) AND ($2::text IS NULL OR state = $2)
ORDER BY event_id DESC, destination
LIMIT $3
"""

# Only failed rows: a pending one is due already, or being attempted under a claim that a
# second attempt must not overlap. The give-up time starts again from now.
RETRY = """
UPDATE deliveries
SET state = 'pending', next_at = now(), give_up_at = now() + (give_up_at - event_at),
    updated_at = now()
WHERE state = 'failed'
  AND ($2::boolean OR event_id = ANY($1::bigint[]))
  AND ($3::text IS NULL OR destination = $3)
RETURNING event_id, destination, state, attempts, next_at
"""

KNOWN = """
SELECT DISTINCT event_id FROM deliveries
WHERE event_id = ANY($1::bigint[]) AND ($2::text IS NULL OR destination = $2)
"""


async def list_deliveries(
    conn: asyncpg.Connection, *, destination: str | None, state: str | None, limit: int
) -> list[asyncpg.Record]:
    """Deliveries, newest event first."""
    return list(await conn.fetch(LIST, destination, state, limit))


async def retry(
    conn: asyncpg.Connection,
    *,
    event_ids: Sequence[int],
    failed: bool,
    destination: str | None = None,
) -> list[asyncpg.Record]:
    """Make the failed deliveries (all, or those of `event_ids`) due now."""
    return list(await conn.fetch(RETRY, list(event_ids), failed, destination))


async def unknown_events(
    conn: asyncpg.Connection, event_ids: Sequence[int], destination: str | None
) -> list[int]:
    """Those of `event_ids` that have no delivery (to `destination`)."""
    known = {r["event_id"] for r in await conn.fetch(KNOWN, list(event_ids), destination)}
    return [i for i in event_ids if i not in known]
