"""The ledger: the only place that moves orders and writes notifications and order_events.

Two other writes touch `orders`, both operators' and neither moving a status: store/orders.py
inserts pending orders (`orders create`, the demo), and store/ops.py's `resolve_reviews` closes
reviews, whose trigger (sql/006_reviews.sql) recomputes `orders.needs_review` under the order's
row lock (a batch only ever sets that flag, from the row as locked). resolve_reviews locks its
orders in its own order: a deadlock with a batch aborts one side, and a batch that loses is
decided again (LOST_RACE).

Notifications that arrive together are written together, and every caller gets exactly the
outcome it would have had alone, after the commit. A batch costs two round trips: one read (the
orders it names, and which of its nonces were already seen) and one statement that writes
everything as a single implicit transaction. Batches form while earlier ones are being written
("group commit", store/batching.py): an idle service writes a lone notification at once, and
under load a notification waits at most for the batches in flight.

Within a batch, notifications are decided in arrival order against the statuses read, so two
deliveries of one order behave as if sequential. The write is an optimistic lock: each order
moves with `UPDATE ... WHERE status = old`, each nonce is claimed with `ON CONFLICT`, and if any
of them touches fewer rows than planned (another writer got there first) the statement aborts,
nothing it wrote remains, and the batch is read and decided again. A batch that fails for any
other database error is retried one notification at a time, so one bad row cannot sink the
others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import NamedTuple

import asyncpg

from receiver import metrics
from receiver.core.notification import (
    CONTENT_TYPE_HEADER,
    STATUSES,
    Inbound,
    Notification,
    Outcome,
    Status,
    is_identifier,
    kept_headers,
)
from receiver.core.planning import Decision, Move, OrderKey, OrderState, Plan, order_key, plan_batch
from receiver.errors import Rejected
from receiver.logging import json_dumps
from receiver.store.batching import Batcher
from receiver.store.database import Health, connection, guarded
from receiver.store.literals import Column, bool_array, column_arrays, int_array, text_array

#: `notifications.source`: pushed by the gateway, an order-query reply, an operator's replay.
NOTIFY, QUERY, REPLAY = "notify", "query", "replay"
SOURCES = (NOTIFY, QUERY, REPLAY)

RACE_RETRIES = 5  # then once more, and a loss after that fails the batch like any error
# A lost race: another writer moved an order or claimed a nonce first (the batch's own check
# raises serialization_failure), or PostgreSQL broke a deadlock by aborting this batch (locks are
# taken in one order, see WRITE_BATCH, but a writer outside the ledger need not).
LOST_RACE = (asyncpg.SerializationError, asyncpg.exceptions.DeadlockDetectedError)

# In the same order as the batches claim them (code points: COLLATE "C" on UTF-8), which may
# renew an old nonce while it is being pruned.
PRUNE_NONCES = """
DELETE FROM gopay_nonces WHERE nonce IN (
    SELECT nonce FROM gopay_nonces WHERE seen_at < now() - $1::interval
    ORDER BY nonce COLLATE "C"
    FOR UPDATE
)
"""

# What a batch is decided against: its orders, and those of its nonces seen within the window.
READ_BATCH = """
SELECT o.id, o.provider, o.merchant_id, o.out_trade_no, o.status, o.amount_minor, o.currency,
       o.channel, o.paid_amount_minor,
       o.needs_review AND EXISTS (
           SELECT 1 FROM reviews r
           WHERE r.order_id = o.id AND r.resolved_at IS NULL
             AND r.reason IN ('amount_mismatch', 'currency_mismatch')) AS held,
       NULL AS nonce
FROM orders o
JOIN unnest($1::text::text[], $2::text::text[], $3::text::text[])
     AS k (provider, merchant_id, out_trade_no)
  USING (provider, merchant_id, out_trade_no)
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, n.nonce
FROM gopay_nonces n
WHERE n.nonce = ANY($4::text::text[]) AND n.seen_at >= now() - $5::interval
"""

# Everything a batch writes, in one statement and so one transaction. Notification ids are drawn
# up front, in arrival order, so each caller learns its own id and each event points at the
# notification that caused it. The trigger on order_events sends the NOTIFY. Columns typed
# `$n::text::<type>[]` arrive as array literals (see store/literals.py).
#
# Every batch takes its row locks in one global order, so that concurrent batches (other
# replicas, other workers) never deadlock: first its nonces, in code-point order (the caller
# sorts them; the index takes them in the order given), then its orders by id (`locked`, which
# `moved` waits for; `locked` waits for `claimed`). Each `(SELECT count(*) FROM x) >= 0` only
# says "after x".
WRITE_BATCH = """
WITH input AS MATERIALIZED (
    SELECT t.*, nextval(pg_get_serial_sequence('notifications', 'id')) AS nid
    FROM unnest($1::text::text[], $2::text::text[], $3::text[], $4::bytea[],
                $5::text::text[], $6::text::text[], $7::text::text[], $8::text::text[],
                $9::text::bigint[], $10::text::text[], $11::text::text[], $12::text::text[],
                $13::text::bigint[])
         WITH ORDINALITY AS t (provider, remote_addr, headers, body, merchant_id, out_trade_no,
                               outcome, detail, order_id, from_status, to_status, source,
                               replay_of, ord)
),
inserted AS (
    INSERT INTO notifications (id, provider, remote_addr, headers, body, merchant_id,
                               out_trade_no, outcome, detail, order_id, source, replay_of)
    SELECT nid, provider, remote_addr, headers::jsonb, body, merchant_id, out_trade_no,
           outcome, detail, order_id, source, replay_of
    FROM input ORDER BY ord
),
claimed AS (
    INSERT INTO gopay_nonces (nonce) SELECT unnest($21::text::text[])
    ON CONFLICT (nonce) DO UPDATE SET seen_at = now()
        WHERE gopay_nonces.seen_at < now() - $22::interval
    RETURNING nonce
),
locked AS (
    SELECT o.id FROM orders o
    WHERE (o.id = ANY($14::text::bigint[]) OR o.id = ANY($24::text::bigint[]))
      AND (SELECT count(*) FROM claimed) >= 0
    ORDER BY o.id
    FOR NO KEY UPDATE
),
moved AS (
    UPDATE orders o
    SET status = m.new_status,
        needs_review = o.needs_review OR m.late,
        paid_amount_minor = CASE WHEN m.new_status = 'paid' THEN m.paid
                                 ELSE o.paid_amount_minor END,
        paid_at = CASE WHEN m.new_status = 'paid' THEN coalesce(m.paid_at, now())
                       ELSE o.paid_at END,
        provider_trade_no = coalesce(m.provider_trade_no, o.provider_trade_no),
        updated_at = now()
    FROM unnest($14::text::bigint[], $15::text::text[], $16::text::text[],
                $17::text::boolean[], $18::text::bigint[], $19::timestamptz[], $20::text::text[])
         AS m (order_id, old_status, new_status, late, paid, paid_at, provider_trade_no)
    WHERE o.id = m.order_id AND o.status = m.old_status AND (SELECT count(*) FROM locked) >= 0
    RETURNING o.id
),
events AS (
    INSERT INTO order_events (order_id, from_status, to_status, notification_id)
    SELECT order_id, from_status, to_status, nid FROM input
    WHERE to_status IS NOT NULL
    ORDER BY ord
),
-- One open review per order, reason and amount (a partial unique index): a gateway's retry
-- opens none. The trigger on reviews sets orders.needs_review; their orders were locked in id
-- order with the moved ones (locked), before any review is written.
reviewed AS (
    INSERT INTO reviews (order_id, reason, amount_minor, currency, detail, notification_id)
    SELECT r.order_id, r.reason, r.amount_minor, r.currency, r.detail, i.nid
    FROM unnest($23::text::bigint[], $24::text::bigint[], $25::text::text[],
                $26::text::bigint[], $27::text::text[], $28::text::text[])
         AS r (ord, order_id, reason, amount_minor, currency, detail)
    JOIN input i ON i.ord = r.ord
    WHERE (SELECT count(*) FROM locked) >= 0
    ORDER BY r.order_id, r.ord
    ON CONFLICT DO NOTHING
)
SELECT array_agg(nid ORDER BY ord) AS nids,
       receiver_check_batch((SELECT count(*) FROM moved), cardinality($14::text::bigint[]),
                            (SELECT count(*) FROM claimed), cardinality($21::text::text[])) AS ok
FROM input
"""

INSERT_NOTIFICATION = """
INSERT INTO notifications
    (provider, remote_addr, headers, body, merchant_id, out_trade_no, outcome, detail, order_id,
     source, replay_of)
VALUES ($1, $2, $3::jsonb, $4, $5, $6, $7, $8, $9, $10, $11)
RETURNING id
"""


class Result(NamedTuple):  # immutable, and built per notification (see notification.Inbound)
    """What the ledger committed for one notification."""

    outcome: Outcome
    notification_id: int
    merchant_id: str | None = None
    out_trade_no: str | None = None
    order_id: int | None = None
    from_status: Status | None = None
    to_status: Status | None = None
    detail: str = ""


class _Item(NamedTuple):
    inbound: Inbound
    n: Notification
    future: asyncio.Future[Result]
    source: str = NOTIFY
    replay_of: int | None = None


class Ledger:
    """Writes notifications and moves orders; concurrent notifications share transactions."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        nonce_window_s: int = 900,
        batch_max: int = 64,
        batch_concurrency: int = 1,
        health: Health | None = None,
    ) -> None:
        self._pool = pool
        self.health = health or Health()
        self._nonce_window = timedelta(seconds=max(nonce_window_s, 1) * 2)
        self._batcher: Batcher[_Item] = Batcher(
            self._write_counted,
            batch_max=batch_max,
            batch_concurrency=batch_concurrency,
            # Any other database error: one notification at a time, so that one bad row cannot
            # sink the others (a connection error arrives here as DatabaseUnavailable).
            split_on=(asyncpg.PostgresError,),
        )

    async def apply(
        self,
        inbound: Inbound,
        n: Notification,
        *,
        source: str = NOTIFY,
        replay_of: int | None = None,
    ) -> Result:
        """Record a verified notification and move its order forward at most once.

        Every source of truth comes this way: a pushed notification, an order-query reply
        (`source="query"`) and an operator's replay (`source="replay"`, `replay_of`).
        """
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._batcher.add(_Item(inbound, n, future, source, replay_of))
        return await future

    async def _write_counted(self, batch: list[_Item]) -> list[Result]:
        """Write a batch (see `Batcher`), reporting to `health` and counting what committed."""
        with guarded(self.health):
            results = await self._write_retrying(batch)
        metrics.batch_written(len(batch))
        for item, result in zip(batch, results, strict=True):
            _counted(item.inbound.provider, result, item.source)
        return results

    async def _write_retrying(self, batch: Sequence[_Item]) -> list[Result]:
        """Read, decide, write; again while another writer moves the same orders first."""
        for _ in range(RACE_RETRIES):
            try:
                return await self._write(batch)
            except LOST_RACE:
                continue
        return await self._write(batch)

    async def _write(self, batch: Sequence[_Item]) -> list[Result]:
        notes = [item.n for item in batch]
        async with self._pool.acquire() as conn:
            orders, seen = await self._read(conn, notes)
            plan = plan_batch(notes, orders, seen)
            nids = await self._write_plan(conn, batch, plan)
        return [
            _result(item.n, d, nid)
            for item, d, nid in zip(batch, plan.decisions, nids, strict=True)
        ]

    async def _read(
        self, conn: asyncpg.Connection, notes: Sequence[Notification]
    ) -> tuple[dict[OrderKey, OrderState], set[str]]:
        keys = list(dict.fromkeys(order_key(n) for n in notes))
        nonces = [n.nonce for n in notes if n.nonce is not None]
        columns = [text_array(column) for column in zip(*keys, strict=True)]
        rows = await conn.fetch(READ_BATCH, *columns, text_array(nonces), self._nonce_window)
        orders: dict[OrderKey, OrderState] = {}
        seen: set[str] = set()
        # Unpacked in READ_BATCH's column order (a record's fields by name cost a lookup each).
        for (
            order_id,
            provider,
            merchant_id,
            trade_no,
            status,
            amount,
            currency,
            channel,
            paid,
            held,
            nonce,
        ) in rows:
            if nonce is None:
                key = (provider, merchant_id, trade_no)
                orders[key] = OrderState(
                    order_id, STATUSES[status], amount, currency, channel, paid, held
                )
            else:
                seen.add(nonce)
        return orders, seen

    async def _write_plan(
        self, conn: asyncpg.Connection, batch: Sequence[_Item], plan: Plan
    ) -> list[int]:
        rows = [_notification_row(item, d) for item, d in zip(batch, plan.decisions, strict=True)]
        moves = [_move_row(plan.moves[order_id]) for order_id in sorted(plan.moves)]
        reviews = [
            _review_row(ord_, d)
            for ord_, d in enumerate(plan.decisions, start=1)
            if d.review is not None
        ]
        record = await conn.fetchrow(
            WRITE_BATCH,
            *column_arrays(rows, NOTIFICATION_COLUMNS),
            *column_arrays(moves, MOVE_COLUMNS),
            text_array(sorted(plan.claims)),
            self._nonce_window,
            *column_arrays(reviews, REVIEW_COLUMNS),
        )
        return list(record["nids"])

    async def reject(
        self,
        inbound: Inbound,
        rejected: Rejected,
        *,
        source: str = NOTIFY,
        replay_of: int | None = None,
    ) -> Result:
        """Record a refused notification with its outcome and reason."""
        async with connection(self._pool, self.health) as conn:
            nid = await conn.fetchval(
                INSERT_NOTIFICATION,
                inbound.provider,
                inbound.remote_addr,
                stored_headers(inbound, rejected.headers),
                inbound.body,
                _storable(rejected.merchant_id),
                _storable(rejected.out_trade_no),
                rejected.outcome.value,
                _text(rejected.reason),
                None,
                source,
                replay_of,
            )
        return _counted(
            inbound.provider,
            Result(
                outcome=rejected.outcome,
                notification_id=nid,
                merchant_id=rejected.merchant_id,
                out_trade_no=rejected.out_trade_no,
                detail=rejected.reason,
            ),
            source,
        )

    async def preview(self, n: Notification) -> Decision:
        """What `apply` would decide for `n` against the orders as they are now; writes nothing."""
        async with connection(self._pool, self.health) as conn:
            orders, seen = await self._read(conn, [n])
        return plan_batch([n], orders, seen).decisions[0]

    async def prune_nonces(self) -> int:
        """Forget nonces older than the replay window; returns how many went."""
        async with connection(self._pool, self.health) as conn:
            status = await conn.execute(PRUNE_NONCES, self._nonce_window)
        return int(status.split()[-1])


def _counted(provider: str, result: Result, source: str) -> Result:
    # Counted here, after the commit, so that the counters agree with the notifications table.
    metrics.notification_recorded(provider, result.outcome, source)
    return result


def _result(n: Notification, d: Decision, nid: int) -> Result:
    return Result(
        outcome=d.outcome,
        notification_id=nid,
        merchant_id=n.merchant_id,
        out_trade_no=n.out_trade_no,
        order_id=d.order_id,
        from_status=d.from_status,
        to_status=d.to_status,
        detail=d.detail,
    )


def _notification_row(item: _Item, d: Decision) -> tuple[object, ...]:
    inbound, n = item.inbound, item.n
    return (
        inbound.provider,
        inbound.remote_addr,
        stored_headers(inbound, n.signed_headers),
        inbound.body,
        n.merchant_id,
        n.out_trade_no,
        d.outcome,  # Outcome and Status are str enums: the member is its text, without .value
        _text("; ".join(x for x in (n.detail, d.detail) if x)),
        d.order_id,
        d.from_status,
        d.to_status,
        item.source,
        item.replay_of,
    )


def stored_headers(inbound: Inbound, signed: Mapping[str, str]) -> str:
    """The `headers` jsonb of a stored notification: its content type and signature headers."""
    kept = kept_headers(inbound.headers, [CONTENT_TYPE_HEADER]) | dict(signed)
    # A lone surrogate falls back to the stdlib, which escapes it; the database refuses that row.
    return json_dumps(kept)


def _move_row(m: Move) -> tuple[object, ...]:
    return (
        m.order_id,
        m.old_status,
        m.new_status,
        m.late,
        m.paid_amount_minor,
        m.paid_at,
        m.provider_trade_no,
    )


def _review_row(ord_: int, d: Decision) -> tuple[object, ...]:
    """A review to open, with the batch position of the notification that opened it."""
    assert d.review is not None
    review = d.review
    return (ord_, d.order_id, review.reason, review.amount_minor, review.currency, review.detail)


# How each column of `_notification_row` and `_move_row` goes to WRITE_BATCH. Headers (long JSON
# text) and bodies (bytes) stay lists: quoting them in Python costs as much as asyncpg's checks,
# and timestamps keep asyncpg's binary encoding of time zones.
NOTIFICATION_COLUMNS: tuple[Column, ...] = (
    text_array,  # provider
    text_array,  # remote_addr
    list,  # headers
    list,  # body
    text_array,  # merchant_id
    text_array,  # out_trade_no
    text_array,  # outcome
    text_array,  # detail
    int_array,  # order_id
    text_array,  # from_status
    text_array,  # to_status
    text_array,  # source
    int_array,  # replay_of
)
MOVE_COLUMNS: tuple[Column, ...] = (
    int_array,  # order_id
    text_array,  # old_status
    text_array,  # new_status
    bool_array,  # late
    int_array,  # paid_amount_minor
    list,  # paid_at
    text_array,  # provider_trade_no
)

REVIEW_COLUMNS: tuple[Column, ...] = (
    int_array,  # ord: the notification's position in the batch
    int_array,  # order_id
    text_array,  # reason
    int_array,  # amount_minor
    text_array,  # currency
    text_array,  # detail (our own words: amounts, statuses, the provider's name)
)


def _text(text: str) -> str:
    return text.replace("\x00", "\\x00")  # text columns cannot hold NUL


def _storable(hint: str | None) -> str | None:
    # A refused notification's identifiers are unverified: keep them only if they can be stored.
    return hint if hint is not None and is_identifier(hint) else None
