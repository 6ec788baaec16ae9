"""Forwarding order events to the `[[forward]]` destinations, signed as Standard Webhooks.

Per destination, every process runs one loop:
1. scan: turn the events after the destination's cursor (the feed's cursor, which never skips)
   into `deliveries` rows, and move the cursor, in one statement; the cursor row is claimed
   with SKIP LOCKED, so one process at a time does it;
2. claim: due rows, in one statement that moves their `next_at` past the attempt's timeout (a
   lease) under FOR UPDATE SKIP LOCKED, so each (event, destination) is attempted by one process
   at a time; a row whose order has an earlier event still pending for this destination is not
   due (events of one order arrive in order; other orders never wait);
3. attempt each claimed row (no database connection held meanwhile), then record what came,
   fenced by `attempts` so that a late finisher whose lease ran out changes nothing.
A process killed mid-attempt leaves its row claimed until the lease ends: it is then due again.
Each destination has its own loop, HTTP session and in-flight limit: one that hangs slows no
other, and no notification (the ledger shares nothing with this but the pool's connections,
held only for the short statements above).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import orjson

from receiver import metrics
from receiver.config import ForwardDestination
from receiver.errors import DatabaseUnavailable
from receiver.events.feed import EVENT_COLUMNS, event_body
from receiver.events.signing import secret_key, signed_headers
from receiver.logging import get_logger
from receiver.store.database import CONNECTION_ERRORS

log = get_logger(__name__)

SCAN_BATCH = 500
MAX_IN_FLIGHT = 128  # attempts at once, per destination and process
POLL_S = 0.25  # how often an idle loop looks for new events and due deliveries
GATHER_S = 0.02  # after a wake-up, let other attempts finish too: one statement records them
LEASE_MARGIN_S = 5.0  # a claim lasts the attempt's timeout and this much more
LAG_REFRESH_S = 5.0
REPLY_KEPT = 200  # bytes of a reply kept in `deliveries.last_reply`
ERROR_KEPT = 200
DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    *CONNECTION_ERRORS,
    DatabaseUnavailable,
    asyncpg.PostgresError,
)

# A destination seen for the first time starts at the feed's horizon now: it receives the
# events from then on (`events follow --after` reads history).
START_CURSOR = """
INSERT INTO forward_cursors (destination, xid, event_id)
VALUES ($1, receiver_event_horizon(), 0)
ON CONFLICT (destination) DO NOTHING
"""

# $1 destination, $2 types wanted ({} = all), $3 providers wanted, $4 give-up age, $5 batch.
# The cursor and the horizon are scalar subqueries: evaluated once, and the index's bounds.
SCAN = """
WITH cur AS MATERIALIZED (
    SELECT xid, event_id FROM forward_cursors WHERE destination = $1 FOR UPDATE SKIP LOCKED
),
batch AS (
    SELECT e.id, e.xid, e.order_id, e.created_at, e.to_status, o.provider
    FROM order_events e JOIN orders o ON o.id = e.order_id
    WHERE (e.xid, e.id) > ((SELECT xid FROM cur), (SELECT event_id FROM cur))
      AND e.xid < (SELECT receiver_event_horizon())
    ORDER BY e.xid, e.id
    LIMIT $5
),
added AS (
    INSERT INTO deliveries (event_id, destination, order_id, xid, event_at, give_up_at)
    SELECT id, $1, order_id, xid, created_at, created_at + $4::interval FROM batch
    WHERE (cardinality($2::text[]) = 0 OR 'order.' || to_status = ANY($2::text[]))
      AND (cardinality($3::text[]) = 0 OR provider = ANY($3::text[]))
    ON CONFLICT DO NOTHING
    RETURNING 1
),
moved AS (
    UPDATE forward_cursors f SET xid = last.xid, event_id = last.id
    FROM (SELECT xid, id FROM batch ORDER BY xid DESC, id DESC LIMIT 1) AS last
    WHERE f.destination = $1
    RETURNING 1
)
SELECT (SELECT count(*) FROM batch) AS scanned, (SELECT count(*) FROM added) AS added,
       (SELECT count(*) FROM moved) AS moved
"""

# $1 destination, $2 how many, $3 the lease. The earliest pending event of each order only.
# Written so that the plan is index probes whatever the statistics say: generic plans made
# while the table was empty must not turn a backlog into a scan per candidate.
CLAIM = f"""
WITH due AS (
    SELECT d.event_id
    FROM deliveries d
    WHERE d.destination = $1 AND d.state = 'pending' AND d.next_at <= now()
      AND (d.xid, d.event_id) = (
          SELECT p.xid, p.event_id FROM deliveries p
          WHERE p.destination = $1 AND p.order_id = d.order_id AND p.state = 'pending'
          ORDER BY p.xid, p.event_id
          LIMIT 1)
    ORDER BY d.next_at
    LIMIT $2
    FOR UPDATE OF d SKIP LOCKED
),
claimed AS (
    UPDATE deliveries d
    SET attempts = d.attempts + 1, next_at = now() + $3::interval, updated_at = now()
    WHERE d.event_id = ANY (ARRAY(SELECT event_id FROM due)) AND d.destination = $1
    RETURNING d.event_id, d.attempts
)
SELECT c.attempts, {EVENT_COLUMNS}
FROM claimed c
JOIN order_events e ON e.id = c.event_id
JOIN orders o ON o.id = e.order_id
LEFT JOIN notifications n ON n.id = e.notification_id
"""  # noqa: S608 - a constant column list, no value

# Deliveries that succeeded since the last step, recorded together: $1 destination, then per
# delivery its event, its attempt (the fence), the status, the request and the reply's head.
DELIVERED = """
UPDATE deliveries d
SET state = 'delivered', last_status = ($4::int[])[array_position($2::bigint[], d.event_id)],
    last_error = NULL, last_request = ($5::text[])[array_position($2::bigint[], d.event_id)],
    last_reply = ($6::text[])[array_position($2::bigint[], d.event_id)], delivered_at = now(),
    updated_at = now()
WHERE d.event_id = ANY ($2::bigint[]) AND d.destination = $1
  AND d.attempts = ($3::int[])[array_position($2::bigint[], d.event_id)]
  AND d.state = 'pending'
"""

# Not delivered: due again after $7, never later than its give-up time; at or past that, failed.
NOT_DELIVERED = """
UPDATE deliveries
SET state = CASE WHEN now() >= give_up_at THEN 'failed' ELSE 'pending' END,
    next_at = least(now() + $7::interval, give_up_at),
    last_status = $4, last_error = $5, last_request = $6, last_reply = $8, updated_at = now()
WHERE event_id = $1 AND destination = $2 AND attempts = $3 AND state = 'pending'
RETURNING state, next_at
"""

LAG = """
SELECT coalesce(extract(epoch FROM now() - min(event_at)), 0)::float8
FROM deliveries WHERE destination = $1 AND state = 'pending'
"""


@dataclass(frozen=True, slots=True)
class Reply:
    """What one attempt came to: a status when the destination answered, else an error."""

    status: int | None
    error: str | None
    head: str  # the reply's first bytes

    @property
    def delivered(self) -> bool:
        return self.error is None and self.status is not None and 200 <= self.status < 300


def retry_delay(schedule: Sequence[float], attempts: int) -> float:
    """Seconds to wait after the `attempts`-th failed attempt; the schedule's last repeats."""
    return schedule[min(attempts, len(schedule)) - 1]


def public_url(url: str) -> str:
    """`url` without credentials or query string, which may carry secrets."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"


def request_summary(url: str, *, msg_id: str, size: int) -> str:
    """The request as kept in `deliveries`: no query string, no credentials, no signature."""
    return f"POST {public_url(url)} webhook-id={msg_id} {size} bytes"


async def attempt(
    session: aiohttp.ClientSession, dest: ForwardDestination, *, msg_id: str, body: bytes
) -> Reply:
    """POST one signed event; redirects are answers, never followed."""
    headers = signed_headers(
        secret_key(dest.secret), msg_id=msg_id, timestamp=int(time.time()), body=body
    )
    headers["content-type"] = "application/json"
    try:
        async with session.post(
            dest.url,
            data=body,
            headers=headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=dest.timeout_s),
        ) as resp:
            head = (await resp.content.read(REPLY_KEPT)).decode("utf-8", "replace")
            return Reply(resp.status, _status_error(resp), head)
    except TimeoutError:
        return Reply(None, f"no reply within {dest.timeout_s:g} s", "")
    except (aiohttp.ClientError, OSError) as exc:
        return Reply(None, (f"{type(exc).__name__}: {exc}")[:ERROR_KEPT], "")


def _status_error(resp: aiohttp.ClientResponse) -> str | None:
    if 200 <= resp.status < 300:
        return None
    if 300 <= resp.status < 400:
        target = urlsplit(resp.headers.get("Location", "")).hostname or "(no location)"
        return f"HTTP {resp.status}: redirect to {target} not followed"
    return f"HTTP {resp.status}"


class DestinationLoop:
    """Forwarding to one destination, in this process."""

    def __init__(self, pool: asyncpg.Pool, dest: ForwardDestination) -> None:
        self.pool = pool
        self.dest = dest
        self.in_flight: set[asyncio.Task[None]] = set()
        self.delivered: list[tuple[int, int, int, str, str]] = []  # not yet recorded
        self.wake = asyncio.Event()
        self.lease = timedelta(seconds=dest.timeout_s + LEASE_MARGIN_S)
        self.give_up = timedelta(seconds=dest.give_up_after_s)

    async def run(self) -> None:
        # No cookie jar: what one reply sets is never sent back with another event.
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=MAX_IN_FLIGHT),
            cookie_jar=aiohttp.DummyCookieJar(),
        ) as session:
            try:
                while True:
                    await self.guarded_step(session)
                    self.wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.wake.wait(), POLL_S)
                    await asyncio.sleep(GATHER_S)
            finally:
                for task in self.in_flight:
                    task.cancel()  # each claim's lease runs out: due again, never lost
                await asyncio.gather(*self.in_flight, return_exceptions=True)
                with contextlib.suppress(*DATABASE_ERRORS):
                    await asyncio.shield(self.record_delivered())

    async def guarded_step(self, session: aiohttp.ClientSession) -> None:
        """A step; a bug in it is logged and the loop goes on (forwarding never stops quietly)."""
        try:
            await self.step(session)
        except Exception:
            log.exception("forwarding_error", destination=self.dest.name)
            await asyncio.sleep(1.0)

    async def step(self, session: aiohttp.ClientSession) -> None:
        try:
            await self.record_delivered()
            await self.scan()
            rows = await self.claim(MAX_IN_FLIGHT - len(self.in_flight))
        except DATABASE_ERRORS as exc:
            log.warning("forwarding_paused", destination=self.dest.name, reason=str(exc)[:200])
            await asyncio.sleep(1.0)
            return
        for row in rows:
            task = asyncio.create_task(self.deliver(session, row))
            self.in_flight.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.in_flight.discard(task)
        self.wake.set()  # the next event of that order may be due now

    async def scan(self) -> None:
        d = self.dest
        while True:
            row = await self.pool.fetchrow(
                SCAN, d.name, list(d.types), list(d.providers), self.give_up, SCAN_BATCH
            )
            if row is None or row["scanned"] < SCAN_BATCH:
                return

    async def claim(self, room: int) -> list[asyncpg.Record]:
        if room <= 0:
            return []
        return list(await self.pool.fetch(CLAIM, self.dest.name, room, self.lease))

    async def deliver(self, session: aiohttp.ClientSession, row: asyncpg.Record) -> None:
        msg_id = str(row["id"])
        body = orjson.dumps(event_body(row))
        reply = await attempt(session, self.dest, msg_id=msg_id, body=body)
        summary = request_summary(self.dest.url, msg_id=msg_id, size=len(body))
        try:
            await self.record(row, reply, summary)
        except DATABASE_ERRORS as exc:  # the lease runs out: attempted again (same webhook-id)
            log.warning("delivery_not_recorded", destination=self.dest.name, reason=str(exc)[:200])

    async def record(self, row: asyncpg.Record, reply: Reply, summary: str) -> None:
        d, event_id, attempts = self.dest, row["id"], row["attempts"]
        if reply.delivered:
            assert reply.status is not None
            self.delivered.append((event_id, attempts, reply.status, summary, reply.head))
            return
        delay = timedelta(seconds=retry_delay(d.retry_s, attempts))
        done = await self.pool.fetchrow(
            NOT_DELIVERED,
            event_id,
            d.name,
            attempts,
            reply.status,
            reply.error,
            summary,
            delay,
            reply.head,
        )
        if done is None:
            return  # another process took it over after our lease ran out
        _report_failure(d.name, event_id=event_id, attempts=attempts, reply=reply, done=done)

    async def record_delivered(self) -> None:
        """Record the deliveries that succeeded since the last step, in one statement."""
        done, self.delivered = self.delivered, []
        if not done:
            return
        try:
            await self.pool.execute(DELIVERED, self.dest.name, *map(list, zip(*done, strict=True)))
        except BaseException:
            self.delivered[:0] = done  # recorded at the next step (or attempted again)
            raise
        for event_id, attempts, *_ in done:
            metrics.delivery_finished(self.dest.name, "delivered")
            log.debug("delivered", destination=self.dest.name, event_id=event_id, attempts=attempts)

    async def refresh_lag(self) -> None:
        metrics.delivery_lag(self.dest.name, await self.pool.fetchval(LAG, self.dest.name))


def _report_failure(
    destination: str, *, event_id: int, attempts: int, reply: Reply, done: asyncpg.Record
) -> None:
    """One log line per attempt that failed; the last one says it gave up."""
    failed = done["state"] == "failed"
    metrics.delivery_finished(destination, "failed" if failed else "retried")
    fields: dict[str, Any] = {
        "destination": destination,
        "event_id": event_id,
        "attempts": attempts,
        "status": reply.status,
        "error": reply.error,
    }
    if failed:
        log.error("delivery_failed", **fields)
    else:
        log.warning("delivery_retried", next_at=done["next_at"].isoformat(), **fields)


async def start_cursors(pool: asyncpg.Pool, destinations: Sequence[ForwardDestination]) -> None:
    """Give each destination seen for the first time its starting position."""
    for d in destinations:
        await pool.execute(START_CURSOR, d.name)


async def run_forwarding(pool: asyncpg.Pool, destinations: Sequence[ForwardDestination]) -> None:
    """Forward to every destination until cancelled."""
    loops = [DestinationLoop(pool, d) for d in destinations]
    for d in destinations:
        metrics.zero_deliveries(d.name)
    async with asyncio.TaskGroup() as group:
        for loop in loops:
            group.create_task(loop.run())
        group.create_task(_watch_lag(loops))


async def _watch_lag(loops: Sequence[DestinationLoop]) -> None:
    while True:
        for loop in loops:
            with contextlib.suppress(*DATABASE_ERRORS):
                await loop.refresh_lag()
        await asyncio.sleep(LAG_REFRESH_S)


@contextlib.asynccontextmanager
async def forwarding(
    pool: asyncpg.Pool, destinations: Sequence[ForwardDestination]
) -> AsyncIterator[None]:
    """Forwarding in the background for the block's life (nothing when no destination)."""
    if not destinations:
        yield
        return
    await start_cursors(pool, destinations)  # before serving: no event of this run is missed
    task = asyncio.create_task(run_forwarding(pool, destinations))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
