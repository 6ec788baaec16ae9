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

from receiver.errors import Rejected
from receiver.gateways import Gateway, with_signature_headers
from receiver.gateways.baofoo.notify import FORM_TYPE
from receiver.handlers import check_source
from receiver.ledger import QUERY, REPLAY, Ledger, Result
from receiver.notification import Inbound, Notification

#: The content type a gateway sends, for rows stored without one.
USUAL_CONTENT_TYPE = {"gopay": "application/json", "baofoo": FORM_TYPE}
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
    inbound = stored_inbound(row)
    try:
        check_source(gateway, inbound.remote_addr)
        n = gateway.parse(inbound, fresh=False)
    except Rejected as rejected:
        if dry_run:
            return _refused(base, rejected)
        refused = with_signature_headers(gateway, inbound, rejected)
        stored = await ledger.reject(inbound, refused, source=REPLAY, replay_of=row["id"])
        return _replayed(base, stored)
    if dry_run:
        return await _preview(base, n, ledger)
    stored = await ledger.apply(inbound, n, source=REPLAY, replay_of=row["id"])
    return _replayed(base, stored)


def _refused(base: Mapping[str, Any], rejected: Rejected) -> Replayed:
    return Replayed(
        **base,
        outcome=rejected.outcome.value,
        reason=rejected.reason,
        merchant_id=rejected.merchant_id,
        out_trade_no=rejected.out_trade_no,
        dry_run=True,
    )


async def _preview(base: Mapping[str, Any], n: Notification, ledger: Ledger) -> Replayed:
    d = await ledger.preview(n)
    return Replayed(
        **base,
        outcome=d.outcome.value,
        reason=d.detail,
        merchant_id=n.merchant_id,
        out_trade_no=n.out_trade_no,
        from_status=d.from_status and d.from_status.value,
        to_status=d.to_status and d.to_status.value,
        dry_run=True,
    )


def _replayed(base: Mapping[str, Any], stored: Result) -> Replayed:
    return Replayed(
        **base,
        outcome=stored.outcome.value,
        reason=stored.detail,
        notification_id=stored.notification_id,
        merchant_id=stored.merchant_id,
        out_trade_no=stored.out_trade_no,
        from_status=stored.from_status and stored.from_status.value,
        to_status=stored.to_status and stored.to_status.value,
    )
