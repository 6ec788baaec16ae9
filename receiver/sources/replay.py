"""Replay: re-process stored notifications through today's keys, rules and ledger.

The stored bytes and signature headers are verified again exactly as on arrival (a forgery stays
`bad_signature`); only freshness and the nonce are not re-checked, since a replay is by nature
late and its nonce was used once already. Each replay is a new `notifications` row with
`source = 'replay'` and `replay_of`; the status rules make a second replay of the same payment
a `duplicate`, never a second event. The obvious use: notifications refused as `unknown_order`
because they came before the order existed.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

import asyncpg
from aiohttp.helpers import parse_mimetype

from receiver.core.notification import Inbound
from receiver.errors import DatabaseUnavailable
from receiver.gateways import Gateway
from receiver.gateways.registry import GATEWAYS
from receiver.sources.intake import receive
from receiver.store.ledger import QUERY, REPLAY, Ledger

#: The content type a gateway sends, for rows stored without one.
USUAL_CONTENT_TYPE = {g.provider: g.usual_content_type for g in GATEWAYS}
CONTENT_TYPE = "content-type"

# A selection is read in batches of at most BATCH rows, each after the last id of the one before
# (a keyset): bodies can be 64 KB each, and a selection can name every row of a month.
BATCH = 100

FIND_IDS = "SELECT id FROM notifications WHERE id = ANY($1::bigint[])"
SELECT_BY_IDS = """
SELECT id, provider, remote_addr, headers, body, outcome, source
FROM notifications WHERE id = ANY($1::bigint[]) AND id > $2 ORDER BY id LIMIT $3
"""
# What is there when the replay starts: the replays it stores come after, and are not its own.
LAST_ID = "SELECT coalesce(max(id), 0) FROM notifications"
# By outcome: what gateways pushed (not earlier replays or query replies), oldest first.
SELECT_BY_OUTCOME = """
SELECT id, provider, remote_addr, headers, body, outcome, source
FROM notifications
WHERE outcome = $1 AND source = 'notify'
  AND ($2::text IS NULL OR provider = $2)
  AND ($3::interval IS NULL OR received_at >= now() - $3::interval)
  AND id > $4 AND id <= $5
ORDER BY id
LIMIT $6
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class Selection:
    """Which stored notifications to replay: `ids`, or an outcome with optional filters."""

    ids: Sequence[int] = ()
    outcome: str | None = None
    provider: str | None = None
    since: timedelta | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Replayed:
    """One stored notification replayed (or, with `dry_run`, what its replay would do)."""

    replay_of: int
    provider: str
    was: str  # the stored row's outcome
    outcome: str | None  # the replay's outcome; None: not replayed (see reason)
    reason: str = ""
    notification_id: int | None = None  # the replay's own row
    merchant_id: str | None = None
    out_trade_no: str | None = None
    from_status: str | None = None
    to_status: str | None = None
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The line printed for this notification."""
        return asdict(self)


class NoSuchNotification(Exception):
    """An id given to replay names no stored notification."""


async def select(
    pool: asyncpg.Pool, selection: Selection, *, batch: int = BATCH
) -> AsyncIterator[list[asyncpg.Record]]:
    """The stored notifications a selection names, oldest first, `batch` rows at a time; every
    id must exist (checked before the first batch, without reading any body)."""
    async with pool.acquire() as conn:
        if selection.ids:
            found = {r["id"] for r in await conn.fetch(FIND_IDS, list(selection.ids))}
            if missing := sorted(set(selection.ids) - found):
                raise NoSuchNotification(f"no stored notification with id {missing[0]}")
        last_id: int = await conn.fetchval(LAST_ID)
    after = 0
    while True:
        async with pool.acquire() as conn:
            rows: list[asyncpg.Record] = await _batch(
                conn, selection, after=after, until=last_id, limit=batch
            )
        if not rows:
            return
        yield rows
        after = rows[-1]["id"]


async def _batch(
    conn: asyncpg.Connection, selection: Selection, *, after: int, until: int, limit: int
) -> list[asyncpg.Record]:
    if selection.ids:
        return list(await conn.fetch(SELECT_BY_IDS, list(selection.ids), after, limit))
    return list(
        await conn.fetch(
            SELECT_BY_OUTCOME,
            selection.outcome,
            selection.provider,
            selection.since,
            after,
            until,
            limit,
        )
    )


def stored_inbound(row: Mapping[str, Any]) -> Inbound:
    """The notification as it arrived: stored body, signature headers and content type."""
    headers = json.loads(row["headers"]) if isinstance(row["headers"], str) else row["headers"]
    provider = row["provider"]
    stored_type = next((v for k, v in headers.items() if k.lower() == CONTENT_TYPE), "")
    mime = parse_mimetype(stored_type or USUAL_CONTENT_TYPE.get(provider, ""))
    return Inbound(
        provider=provider,
        body=bytes(row["body"]),
        headers=headers,
        content_type=f"{mime.type}/{mime.subtype}",
        charset=mime.parameters.get("charset"),
        remote_addr=row["remote_addr"],
    )


async def replay(
    row: Mapping[str, Any],
    *,
    gateways: Mapping[str, Gateway],
    ledger: Ledger,
    dry_run: bool = False,
) -> Replayed:
    """Verify a stored notification again and apply it through the ledger as a new row."""
    base = {"replay_of": row["id"], "provider": row["provider"], "was": row["outcome"]}
    gateway = gateways.get(row["provider"])
    if row["source"] == QUERY or gateway is None:
        reason = "an order-query reply" if gateway else "no such gateway"
        return Replayed(**base, outcome=None, reason=f"not replayable: {reason}", dry_run=dry_run)
    received = await receive(
        gateway,
        stored_inbound(row),
        ledger=ledger,
        source=REPLAY,
        replay_of=row["id"],
        fresh=False,
        dry_run=dry_run,
    )
    if received.unavailable:
        raise DatabaseUnavailable(received.note)
    fields = received.fields()
    return Replayed(
        **base,
        outcome=fields.get("outcome"),
        reason=fields["reason"],
        notification_id=fields.get("notification_id"),
        merchant_id=fields["merchant_id"],
        out_trade_no=fields["out_trade_no"],
        from_status=fields.get("from_status"),
        to_status=fields.get("to_status"),
        dry_run=dry_run,
    )
