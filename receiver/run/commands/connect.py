"""How a command gets its database: one connection or a small pool, the schema current."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import asyncpg

from receiver.config import Config
from receiver.run.commands.failures import Failure
from receiver.store import database, ledger


@asynccontextmanager
async def connect(config: Config, *, create: bool = False) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the configured (or embedded) database; only migrate may `create` an
    embedded one (see database.database_url), and every other command finds the schema current
    (it never migrates: older `serve` processes may be using this database).

    Through PgBouncer in transaction mode, the connection is inside one transaction throughout
    (see database.TransactionPool).
    """
    pgbouncer = config.database.pgbouncer
    async with database.database_url(config.database, create=create) as url:
        try:
            conn = await asyncpg.connect(
                url,
                timeout=database.CONNECT_TIMEOUT_S,
                **database.connect_options(pgbouncer=pgbouncer),
            )
        except database.CONNECT_ERRORS as exc:
            raise database.connection_failure(exc) from exc
        try:
            async with AsyncExitStack() as stack:
                if pgbouncer:
                    await stack.enter_async_context(conn.transaction())
                if not create:
                    await _require_current(conn)
                yield conn
        finally:
            await conn.close()


async def _require_current(conn: asyncpg.Connection) -> None:
    try:
        await database.require_current(conn)
    except database.SchemaNotCurrent as exc:
        raise Failure(str(exc)) from None


async def read(
    config: Config, fetch: Callable[[asyncpg.Connection], Awaitable[list[asyncpg.Record]]]
) -> list[asyncpg.Record]:
    """Rows fetched on a connection to the configured database, its schema current."""
    async with connect(config) as conn:
        return await fetch(conn)


@asynccontextmanager
async def pooled_ledger(config: Config) -> AsyncIterator[tuple[asyncpg.Pool, ledger.Ledger]]:
    """A small pool on the configured database, its schema current, and a ledger on it."""
    async with database.database_url(config.database) as url:
        pool = await database.create_pool(
            url, min_size=1, max_size=4, pgbouncer=config.database.pgbouncer
        )
        try:
            async with pool.acquire() as conn:
                await _require_current(conn)
            yield pool, ledger.Ledger(pool, nonce_window_s=config.gopay.timestamp_tolerance_s)
        finally:
            await pool.close()
