"""Reconciliation: ask the gateways about orders whose notification never came.

Notifications are hints; the gateway's order query is the truth. Due orders -> claimed in
PostgreSQL -> the injected `OrderQuerier`s -> the same ledger as notifications
(`source = 'query'`).

The schedule is computed from `orders.created_at` alone (the merchant's checkout inserts orders
and knows nothing of it); its pure rules are in `receiver.core.schedule`.

Claiming is one statement per batch that moves each order's `order_queries.next_at` past now()
only where it was due, so with several workers or replicas each due order is queried once per
interval: the first claimer wins, the others find it no longer due.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import asyncpg

from receiver import metrics
from receiver.config import ReconcileConfig
from receiver.core.planning import changes_nothing
from receiver.core.schedule import (
    ASK,
    RETIRE,
    disposition,
    first_query_at,
    min_gap_s,
    next_query_at,
    poll_interval_s,
)
from receiver.errors import DatabaseUnavailable
from receiver.gateways import OrderQuerier, OrderRef, QueryAnswer, QueryResult
from receiver.gateways.asking import classified
from receiver.logging import get_logger
from receiver.sources.intake import Received, record
from receiver.sources.pacing import Pacer
from receiver.store.database import connection
from receiver.store.ledger import QUERY, Ledger

if TYPE_CHECKING:
    import aiohttp

log = get_logger(__name__)

TIMEOUT_GRACE_S = 1.0  # a querier that overruns its own timeout by this much is cut off
CLAIM_PER_SLOT = 2  # orders claimed per round, per query slot
BEFORE_ALL = datetime.min.replace(tzinfo=UTC)  # a new pass's cursor: asyncpg sends '-infinity'
NEVER = datetime.max.replace(tzinfo=UTC)  # a retired row's next_at: asyncpg sends 'infinity'

NOT_QUERYABLE = "not_queryable"  # report result: the querier cannot ask about this order
TOO_SOON = "too_soon"  # report result: --order on a Baofoo order asked less than a minute ago


# --- SQL --------------------------------------------------------------------------------------

# The next page of due rows after the pass's cursor, in (next_at, order_id) order: one index
# range (order_queries_due_idx) whatever the backlog, and now() read afresh on every page, so
# orders that come due while a pass drains a backlog are reached by that pass. A new order's row
# is due at its created_at (sql/008): the first page that meets it puts it back to its first
# query time.
SELECT_DUE = """
SELECT q.next_at AS due_at, o.id, o.provider, o.merchant_id, o.out_trade_no, o.amount_minor,
       o.currency, o.channel, o.created_at, o.status = 'pending' AS pending, now() AS now
FROM order_queries q
JOIN orders o ON o.id = q.order_id
WHERE q.provider = $1
  AND q.next_at <= now()
  AND (q.next_at, q.order_id) > ($2::timestamptz, $3::bigint)
ORDER BY q.next_at, q.order_id
LIMIT $4
"""

# The claim: only where the order is still pending and still due does next_at move on. Rows
# locked by another claimer are skipped (it is claiming them); one locked and released while
# this statement runs is re-read and, its next_at moved, no longer due. Either way each due
# order is claimed once per interval, by one process.
CLAIM_DUE = """
WITH c AS (
    SELECT * FROM unnest($1::bigint[], $2::timestamptz[]) AS c (order_id, next_at)
),
locked AS (
    SELECT q.order_id FROM order_queries q
    JOIN c USING (order_id)
    JOIN orders o ON o.id = q.order_id AND o.status = 'pending'
    WHERE q.next_at <= now()
    ORDER BY q.order_id
    FOR UPDATE OF q SKIP LOCKED
)
UPDATE order_queries q
SET attempts = q.attempts + 1, next_at = c.next_at, last_at = now()
FROM locked JOIN c USING (order_id)
WHERE q.order_id = locked.order_id
RETURNING q.order_id
"""

# Rows a pass met but must not query: retired ('infinity': no longer pending, or past the query
# window) or put back to their first query time. Only rows still due are touched.
RESCHEDULE = """
WITH c AS (
    SELECT * FROM unnest($1::bigint[], $2::timestamptz[]) AS c (order_id, next_at)
),
locked AS (
    SELECT q.order_id FROM order_queries q JOIN c USING (order_id)
    WHERE q.next_at <= now()
    ORDER BY q.order_id
    FOR UPDATE OF q SKIP LOCKED
)
UPDATE order_queries q SET next_at = c.next_at
FROM locked JOIN c USING (order_id)
WHERE q.order_id = locked.order_id
"""

# An operator's "this order, now": whatever the schedule says, but never within the gap.
CLAIM_NOW = """
INSERT INTO order_queries AS q (order_id, provider, attempts, next_at, last_at)
VALUES ($1, $4, 1, $2, now())
ON CONFLICT (order_id) DO UPDATE
SET attempts = q.attempts + 1, last_at = now(), next_at = greatest(q.next_at, EXCLUDED.next_at)
WHERE q.last_at IS NULL OR q.last_at <= now() - $3::interval
RETURNING q.order_id
"""

SELECT_ORDER = """
SELECT id, provider, merchant_id, out_trade_no, amount_minor, currency, channel, created_at,
       now() AS now
FROM orders
WHERE provider = $1 AND merchant_id = $2 AND out_trade_no = $3
"""

# What the last reply was and came to; a reply not stored (it changed nothing) is counted.
RECORD_RESULT = """
UPDATE order_queries
SET last_result = $2, last_outcome = $3, last_notification_id = $4,
    unstored = unstored + CASE WHEN $3::text IS NOT NULL AND $4::bigint IS NULL THEN 1 ELSE 0 END
WHERE order_id = $1
"""


# --- what a pass reports ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    """One order queried: what the gateway said and what the ledger made of it."""

    provider: str
    merchant_id: str
    out_trade_no: str
    order_id: int
    result: str  # a QueryResult value, or NOT_QUERYABLE / TOO_SOON
    outcome: str | None = None  # the stored notification's outcome; None: nothing stored
    reason: str = ""
    notification_id: int | None = None
    from_status: str | None = None
    to_status: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The report as one JSON object."""
        return asdict(self)

    @property
    def attempted(self) -> bool:
        """True when a gateway was asked."""
        return self.result not in (NOT_QUERYABLE, TOO_SOON)

    @property
    def reached(self) -> bool:
        """True when a gateway answered (whatever it said)."""
        return self.attempted and self.result != QueryResult.ERROR


class OrderNotFound(Exception):
    """`--order` names an order that does not exist."""


@dataclass(frozen=True, slots=True)
class _Due:
    order: OrderRef
    created_at: datetime
    now: datetime


@dataclass(frozen=True, slots=True)
class _Cursor:
    """Where a pass is: after this (due time, order id). The start is before every row."""

    due_at: datetime = BEFORE_ALL
    order_id: int = 0


@dataclass(slots=True)
class _Page:
    rows: list[asyncpg.Record]
    cursor: _Cursor
    last: bool  # nothing due after it, or the pass has gone round
    claimed: list[_Due] = field(default_factory=list)


def _page(rows: Sequence[asyncpg.Record], *, stop_at: set[int], batch: int) -> _Page:
    """A page of SELECT_DUE, cut before the first order this pass already claimed."""
    kept = list(rows)
    for i, row in enumerate(rows):
        if row["id"] in stop_at:
            kept = kept[:i]
            break
    cursor = _Cursor(kept[-1]["due_at"], kept[-1]["id"]) if kept else _Cursor()
    return _Page(kept, cursor, last=len(kept) < batch)


def order_ref(row: Mapping[str, Any]) -> OrderRef:
    """What an order query needs of an `orders` row."""
    return OrderRef(
        order_id=row["id"],
        provider=row["provider"],
        merchant_id=row["merchant_id"],
        out_trade_no=row["out_trade_no"],
        amount_minor=row["amount_minor"],
        currency=row["currency"],
        channel=row["channel"],
    )


def _due(row: asyncpg.Record) -> _Due:
    return _Due(order_ref(row), row["created_at"], row["now"])


# --- the shell --------------------------------------------------------------------------------


class Reconciler:
    """Claims due orders, asks their gateways, and applies the answers through the ledger.

    Each provider has its own share of `config.concurrency` query slots and its own loop, so a
    gateway that hangs or is down holds only its own slots, each for at most `timeout_s`.
    """

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        ledger: Ledger,
        queriers: Mapping[str, OrderQuerier],
        session: aiohttp.ClientSession,
        config: ReconcileConfig,
        report: Callable[[Report], None] = lambda _report: None,
    ) -> None:
        self._pool = pool
        self._ledger = ledger
        self.queriers = dict(queriers)
        self._session = session
        self.config = config
        self._report = report
        share = max(1, config.concurrency // max(1, len(self.queriers)))
        self._slots = {provider: asyncio.Semaphore(share) for provider in self.queriers}
        self._share = share
        self._claim_batch = share * CLAIM_PER_SLOT
        self._pacers = {provider: Pacer(config.max_per_second) for provider in self.queriers}
        # (provider, merchant) whose `misconfigured` answer was logged in the current pass
        self._told: set[tuple[str, str]] = set()

    async def run_pass(self, provider: str | None = None) -> list[Report]:
        """Query every order due now (of `provider`, else of every provider), each once."""
        providers = [p for p in self.queriers if provider in (None, p)]
        passes = await asyncio.gather(*(self.drain(p) for p in providers))
        return [report for reports in passes for report in reports]

    async def drain(self, provider: str) -> list[Report]:
        """Claim and query `provider`'s due orders, in due order, each at most once.

        The pass walks a cursor over (due time, order id) instead of remembering what it saw, so
        a page costs the same however long the backlog. Orders that come due meanwhile are after
        the cursor and reached by this pass; it ends when nothing due is left after the cursor,
        or when it meets an order it claimed itself (it has gone round: everything due when it
        began is done, and the rest is the next pass's).
        """
        reports: list[Report] = []
        self._told = {told for told in self._told if told[0] != provider}  # a new pass
        # The next page is claimed while this one is being asked about: a bounded queue
        # between the claiming loop and one asker per query slot.
        queue: asyncio.Queue[_Due | None] = asyncio.Queue(maxsize=self._claim_batch)
        askers = self._share

        async def ask() -> None:
            while (due := await queue.get()) is not None:
                reports.append(await self._query(due.order))

        tasks = [asyncio.create_task(ask()) for _ in range(askers)]
        try:
            await self._claim_all(provider, queue)
            for _ in tasks:
                await queue.put(None)
            await asyncio.gather(*tasks)
        except BaseException:
            # Orders claimed and not yet asked about are asked at their next due time.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return reports

    async def _claim_all(self, provider: str, queue: asyncio.Queue[_Due | None]) -> None:
        """Claim page after page (see `drain`), handing each claimed order to the askers."""
        cursor = _Cursor()
        claimed_here: set[int] = set()
        while True:
            page = await self._claim(provider, after=cursor, stop_at=claimed_here)
            for due in page.claimed:
                claimed_here.add(due.order.order_id)
                await queue.put(due)
            if page.last:
                return
            cursor = page.cursor

    async def query_now(self, provider: str, merchant_id: str, out_trade_no: str) -> Report:
        """Query one order at once, whatever its schedule (the gap between queries kept)."""
        async with connection(self._pool, self._ledger.health) as conn:
            row = await conn.fetchrow(SELECT_ORDER, provider, merchant_id, out_trade_no)
            if row is None:
                what = f"no {provider} order {out_trade_no} for merchant {merchant_id}"
                raise OrderNotFound(what)
            due = _due(row)
            claimed = await conn.fetchval(
                CLAIM_NOW,
                due.order.order_id,
                self._next_at(due),
                timedelta(seconds=min_gap_s(provider)),
                provider,
            )
        if claimed is None:
            gap = min_gap_s(provider)
            report = _report(due.order, TOO_SOON, reason=f"asked less than {gap:g} s ago")
            self._report(report)
            return report
        return await self._query(due.order)

    async def run_forever(self) -> None:
        """serve's background reconciler: one loop per provider, until cancelled."""
        async with asyncio.TaskGroup() as group:
            for provider in self.queriers:
                group.create_task(self._provider_forever(provider))

    async def _provider_forever(self, provider: str) -> None:
        while True:
            try:
                await self.drain(provider)
            except DatabaseUnavailable as exc:
                log.warning("reconcile_failed", provider=provider, reason=str(exc))
            except Exception:  # a bug must not stop reconciliation for good
                log.exception("reconcile_error", provider=provider)
            await asyncio.sleep(poll_interval_s(self.config))

    async def _claim(self, provider: str, *, after: _Cursor, stop_at: set[int]) -> _Page:
        """The next page of due orders after `after`, and those of them this process claimed."""
        async with connection(self._pool, self._ledger.health) as conn:
            rows = await conn.fetch(
                SELECT_DUE, provider, after.due_at, after.order_id, self._claim_batch
            )
            page = _page(rows, stop_at=stop_at, batch=self._claim_batch)
            query, later = self._sort(page.rows)
            if later:
                await conn.execute(RESCHEDULE, *zip(*later, strict=True))
            if not query:
                return page
            ids = [d.order.order_id for d in query]
            next_at = [self._next_at(d) for d in query]
            claimed = {r["order_id"] for r in await conn.fetch(CLAIM_DUE, ids, next_at)}
        page.claimed = [d for d in query if d.order.order_id in claimed]
        return page

    def _sort(
        self, rows: Sequence[asyncpg.Record]
    ) -> tuple[list[_Due], list[tuple[int, datetime]]]:
        """Rows to query, and (order id, next_at) for those to retire or put back."""
        query: list[_Due] = []
        later: list[tuple[int, datetime]] = []
        for row in rows:
            what = disposition(
                pending=row["pending"],
                created_at=row["created_at"],
                now=row["now"],
                config=self.config,
            )
            if what == ASK:
                query.append(_due(row))
            elif what == RETIRE:
                later.append((row["id"], NEVER))
            else:
                later.append((row["id"], first_query_at(row["created_at"], self.config)))
        return query, later

    def _next_at(self, due: _Due) -> datetime:
        return next_query_at(
            created_at=due.created_at, now=due.now, provider=due.order.provider, config=self.config
        )

    async def _query(self, order: OrderRef) -> Report:
        querier = self.queriers[order.provider]
        reason = querier.not_queryable(order)
        if reason is not None:
            report = _report(order, NOT_QUERYABLE, reason=reason)
        else:
            pacer = self._pacers[order.provider]
            async with self._slots[order.provider]:
                await pacer.wait()
                answer = await self._ask(querier, order)
            pacer.answered(answer.result)
            report = await self._apply(order, answer)
            metrics.reconcile_query_answered(order.provider, QueryResult(report.result))
            self._tell_misconfigured(order, report)
            await self._record(report)
        self._report(report)
        return report

    async def _ask(self, querier: OrderQuerier, order: OrderRef) -> QueryAnswer:
        timeout_s = self.config.timeout_s
        try:
            async with asyncio.timeout(timeout_s + TIMEOUT_GRACE_S):
                return await querier.query(self._session, order, timeout_s=timeout_s)
        except TimeoutError:
            reason = f"no answer within {timeout_s:g} s"
        except Exception as exc:  # the Protocol says never; one bad querier must not sink a pass
            log.exception("order_query_error", provider=order.provider)
            reason = f"query failed: {type(exc).__name__}"
        return QueryAnswer(result=QueryResult.ERROR, reason=reason)

    async def _apply(self, order: OrderRef, answer: QueryAnswer) -> Report:
        """The answer through the ledger, as a notification; NOT_FOUND and ERROR store nothing."""
        if answer.inbound is None or (answer.notification is None and answer.rejected is None):
            return _report(order, answer.result, reason=answer.reason)
        if answer.notification is not None:
            try:
                # A reply that changes nothing now never will (pending is first and paid is
                # final), so deciding it against the order as read, without the write, is safe:
                # it is counted in order_queries, not stored.
                decision = await self._ledger.preview(answer.notification)
            except (DatabaseUnavailable, asyncpg.PostgresError) as exc:
                reason = f"{answer.reason}; not stored: {exc}"
                return _report(order, answer.result, reason=reason)
            if changes_nothing(decision):
                report = _report(order, answer.result, reason=answer.reason)
                return replace(report, outcome=decision.outcome.value)
        try:
            received = await record(
                self._ledger,
                answer.inbound,
                answer.notification,
                rejected=answer.rejected,
                source=QUERY,
            )
        except asyncpg.PostgresError as exc:
            received = Received(unavailable=True, note=str(exc))
        if received.unavailable:
            # Not stored, so asked again at its next due time; one order must not sink a pass.
            reason = f"{answer.reason}; not stored: {received.note}"
            return _report(order, answer.result, reason=reason)
        fields = received.fields()
        label = classified(answer.result, received.outcome)
        return _report(order, label, reason=answer.reason or fields["reason"], stored=fields)

    def _tell_misconfigured(self, order: OrderRef, report: Report) -> None:
        """Once per gateway and merchant per pass: what the gateway said is wrong with us."""
        told = (order.provider, order.merchant_id)
        if report.result != QueryResult.MISCONFIGURED or told in self._told:
            return
        self._told.add(told)
        log.error(
            "gateway_misconfigured",
            provider=order.provider,
            merchant_id=order.merchant_id,
            out_trade_no=order.out_trade_no,
            reason=report.reason,
        )

    async def _record(self, report: Report) -> None:
        try:
            async with connection(self._pool, self._ledger.health) as conn:
                await conn.execute(
                    RECORD_RESULT,
                    report.order_id,
                    report.result,
                    report.outcome,
                    report.notification_id,
                )
        except DatabaseUnavailable:
            pass  # only bookkeeping: the schedule already moved on when the order was claimed


def _report(
    order: OrderRef, result: str, *, reason: str, stored: Mapping[str, Any] | None = None
) -> Report:
    """One order's report; `stored` is what the intake stored of the reply (Received.fields)."""
    kept = ("outcome", "notification_id", "from_status", "to_status")
    fields = {k: stored[k] for k in kept} if stored is not None else {}
    return Report(
        provider=order.provider,
        merchant_id=order.merchant_id,
        out_trade_no=order.out_trade_no,
        order_id=order.order_id,
        result=str(result),
        reason=reason,
        **fields,
    )


_WARNED = frozenset({QueryResult.ERROR, QueryResult.MISCONFIGURED, QueryResult.LIMITED})


def log_report(report: Report) -> None:
    """serve's log line for one order queried."""
    level = "warning" if report.result in _WARNED else "info"
    getattr(log, level)("order_query", **report.as_dict())
