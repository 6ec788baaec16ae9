"""`receiver events follow`: the event feed as JSON lines, caught up and then followed live.

One connection of its own (LISTEN needs a session, which a transaction-pooling PgBouncer does
not keep: `listen_url` is where that connection goes). The feed is read after every wake-up:
a NOTIFY, a reconnect, or a short poll (the horizon also moves when a transaction that wrote no
event ends, and nobody announces that).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass

import asyncpg
import orjson

from receiver.config import Config
from receiver.events.feed import ALL, Cursor, EventFilter, cursor_of, event_body, read_after
from receiver.store import database

CHANNEL = "order_events"
BATCH = 500
POLL_S = 1.0
RECONNECT_S = 1.0

Emit = Callable[[bytes], None]


class SchemaBehind(Exception):
    """The database's schema is older than this receiver's (a reader never migrates)."""


@asynccontextmanager
async def listen_url(config: Config) -> AsyncIterator[str]:
    """The database URL `events follow` holds a session on: `database.listen_url` when set (a
    direct connection beside a pooler), else the service's database."""
    async with database.database_url(config.database) as url:
        yield database.listen_url(config, url=url)


@dataclass(kw_only=True)
class Follower:
    """Reads the feed after `cursor`, emitting each event's line; `cursor` moves as it goes."""

    url: str
    cursor: Cursor
    wanted: EventFilter = ALL
    once: bool = False
    emit: Emit
    say: Callable[[str], None]  # a line for the operator (stderr)

    async def run(self, stop: asyncio.Event) -> None:
        """Until caught up (`once`) or `stop`; rides out the database going away."""
        outage, connected = False, False
        while not stop.is_set():
            try:
                conn = await asyncpg.connect(self.url, timeout=database.CONNECT_TIMEOUT_S)
            except database.CONNECT_ERRORS as exc:
                if database.refuses(exc) or not connected:  # a wrong URL: say so, do not wait
                    raise database.connection_failure(exc) from exc
                outage = self._outage(outage, exc)
                await _wait(stop, RECONNECT_S)
                continue
            connected = True
            if outage:
                self.say("database back: following again")
                outage = False
            try:
                if await self._session(conn, stop):
                    return
            except BrokenPipeError:
                raise  # the reader went away: an OSError, but no database outage
            except database.CONNECTION_ERRORS as exc:
                outage = self._outage(outage, exc)
            finally:
                with suppress(*database.CONNECTION_ERRORS):
                    await asyncio.wait_for(conn.close(), 2.0)

    def _outage(self, already: bool, exc: BaseException) -> bool:
        if not already:
            reason = database.describe_connection_error(exc)
            self.say(f"database unavailable ({reason}): retrying")
        return True

    async def _session(self, conn: asyncpg.Connection, stop: asyncio.Event) -> bool:
        """Catch up and follow on one connection; True when done (`once`, or stopped)."""
        if not await database.schema_is_current(conn):
            raise SchemaBehind("the database schema is older than this receiver: run migrate")
        woke = asyncio.Event()
        await conn.add_listener(CHANNEL, lambda *_: woke.set())
        while not stop.is_set():
            woke.clear()  # before the read: a NOTIFY during it wakes the next wait
            if await self._read(conn) == BATCH:
                continue
            if self.once:
                return True
            await _wait_any(stop, woke, POLL_S)
        return True

    async def _read(self, conn: asyncpg.Connection) -> int:
        rows = await read_after(conn, self.cursor, wanted=self.wanted, limit=BATCH)
        for row in rows:
            cursor = cursor_of(row)
            self.emit(orjson.dumps(event_body(row) | {"cursor": str(cursor)}))
            self.cursor = cursor
        return len(rows)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _wait_any(stop: asyncio.Event, woke: asyncio.Event, seconds: float) -> None:
    waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(woke.wait())]
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


def stdout_line(line: bytes) -> None:
    """Write one JSON line and flush it, so that a reader downstream sees it at once."""
    out = sys.stdout.buffer
    out.write(line + b"\n")
    out.flush()


async def follow(
    config: Config, *, cursor: Cursor, wanted: EventFilter, once: bool, say: Callable[[str], None]
) -> None:
    """Print the feed on stdout until caught up (`once`), SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with listen_url(config) as url:
        follower = Follower(
            url=url, cursor=cursor, wanted=wanted, once=once, emit=stdout_line, say=say
        )
        await follower.run(stop)
