"""The service's connection pool: a release costs no round trip, and still ends a transaction."""

from __future__ import annotations

from receiver.store.database import create_pool


async def test_a_release_sends_no_reset_query(migrated):
    # asyncpg's default reset (unlock all, CLOSE ALL, UNLISTEN *, RESET ALL) is a round trip on
    # every release: a third of a ledger batch's. Session state therefore survives a release.
    pool = await create_pool(migrated, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            await conn.execute("SET statement_timeout = '1234ms'")
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW statement_timeout") == "1234ms"
    finally:
        await pool.close()


async def test_a_transaction_left_open_is_rolled_back_on_release(migrated):
    pool = await create_pool(migrated, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            await conn.execute("BEGIN; CREATE TEMP TABLE left_open (x int)")
        async with pool.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT to_regclass('pg_temp.left_open')") is None
    finally:
        await pool.close()
