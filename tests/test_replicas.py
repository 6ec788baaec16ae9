"""Several `receiver serve` replicas on one PostgreSQL, directly and through a real PgBouncer
(Debian's binary) in transaction and session mode: they start at once on an empty database
(migrations once), take a storm of duplicate notifications across replicas, and keep every
guarantee: one event per status change, a nonce accepted once whichever replica sees it, every
200 committed, no 503, and no deadlock in pg_stat_database."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from receiver.store import database
from receiver.store.orders import NewOrder, create_order
from tests.support import rawhttp
from tests.support.gateways import charge
from tests.support.gopay_signer import GoPaySigner
from tests.support.pgbouncer import PgBouncer
from tests.support.service_process import HOST, ServiceProcess, write_config

READY_S = 90.0  # three processes starting at once on two shared cores
ORDERS = 320
BLOCK = 16  # orders whose notifications every replica gets at once, each in its own order
FRESH_PER_ORDER = 2  # notifications with a nonce of their own, besides the one every replica gets


@pytest.fixture
async def empty_database(database_url: str) -> AsyncIterator[str]:
    """A database of its own, with no schema: the replicas migrate it."""
    parts = urlsplit(database_url)
    name = f"{parts.path.lstrip('/') or 'postgres'}_replicas"
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield urlunsplit(parts._replace(path=f"/{name}"))
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def replicas(tmp_path: Path, gopay_key_file: Path) -> Iterator[Any]:
    """Start `count` serve processes at once on `url`; stopped afterwards."""
    started: list[ServiceProcess] = []

    def start(url: str, *, count: int, **database: Any) -> list[ServiceProcess]:
        config = write_config(
            tmp_path / "receiver.toml",
            gopay_key_file=gopay_key_file,
            database={"pool_max": 4, **database},
        )
        procs = [ServiceProcess(config, env={"RECEIVER_DATABASE_URL": url}) for _ in range(count)]
        started.extend(p.start() for p in procs)  # at once: they race to migrate
        for p in procs:
            p.wait_ready(READY_S)
        return procs

    yield start
    for p in started:
        p.stop()


async def deadlocks(conn: asyncpg.Connection) -> int:
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    found: int = await conn.fetchval(
        "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
    )
    return found


async def storm(
    services: list[ServiceProcess], signer: GoPaySigner, orders: list[str]
) -> Counter[int]:
    """FRESH_PER_ORDER notifications per order with nonces of their own, then every order's
    notification once more, sent to every replica with one nonce; the replies' statuses.

    The second wave comes in bursts of BLOCK orders: every replica gets the block at the same
    moment (written at once on connections opened beforehand), each in an order of its own (as
    given, reversed, shuffled). The orders are paid by then, so these batches move no order and
    only claim nonces, the same ones in different orders: what deadlocks a ledger that claims
    them in arrival order.
    """
    rng = random.Random(21)
    fresh = [
        (services[(i + k) % len(services)].port, notify_request(signer, no))
        for i, no in enumerate(orders)
        for k in range(FRESH_PER_ORDER)
    ]
    statuses = await burst(fresh)
    for start in range(0, len(orders), BLOCK):
        shared = [notify_request(signer, no) for no in orders[start : start + BLOCK]]
        orderings = [shared, shared[::-1], *(rng.sample(shared, len(shared)) for _ in range(9))]
        statuses += await burst(
            [
                (svc.port, data)
                for svc, ordering in zip(services, orderings[: len(services)], strict=True)
                for data in ordering
            ]
        )
    return Counter(statuses)


def notify_request(signer: GoPaySigner, out_trade_no: str) -> bytes:
    body, headers = signer.notify(charge(out_trade_no))
    return rawhttp.request(headers=headers, body=body)


async def burst(sends: list[tuple[int, bytes]]) -> list[int]:
    """Open a connection per request, then write every request at once; the reply statuses."""
    streams = [await asyncio.open_connection(HOST, port) for port, _ in sends]
    try:
        for (_, writer), (_, data) in zip(streams, sends, strict=True):
            writer.write(data)
        async with asyncio.timeout(30):
            return [(await rawhttp.read_reply(reader)).status for reader, _ in streams]
    finally:
        for _, writer in streams:
            writer.close()


async def assert_storm_kept_every_guarantee(
    url: str, services: list[ServiceProcess], signer: GoPaySigner
) -> None:
    conn = await asyncpg.connect(url)
    try:
        orders = [f"R{i}" for i in range(ORDERS)]
        for no in orders:
            await create_order(
                conn,
                NewOrder(
                    provider="gopay", merchant_id="100001", out_trade_no=no, amount_minor=10000
                ),
            )
        before = await deadlocks(conn)
        statuses = await storm(services, signer, orders)
        n, copies = len(orders), len(services)
        # One of each order's copies claims the nonce (200), the others are refused as replayed
        # (401) whichever replica they reached; the fresh ones are 200 (applied or duplicate).
        assert statuses == Counter({200: n * (1 + FRESH_PER_ORDER), 401: n * (copies - 1)})
        outcomes = dict(
            await conn.fetch("SELECT outcome, count(*) FROM notifications GROUP BY outcome")
        )
        # Every 200 is a committed row: applied once per order, the rest duplicates.
        assert outcomes == {
            "applied": n,
            "duplicate": n * FRESH_PER_ORDER,
            "replayed": n * (copies - 1),
        }
        events = await conn.fetch("SELECT order_id, count(*) FROM order_events GROUP BY order_id")
        assert len(events) == n and {r["count"] for r in events} == {1}
        assert await conn.fetchval("SELECT count(*) FROM orders WHERE status = 'paid'") == n
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(
            list((Path(__file__).parent.parent / "sql").glob("*.sql"))
        )
        for svc in services:
            assert svc.stop(30) == 0, svc.output()
            assert not [e for e in svc.logs() if e.get("level") == "error"], svc.output()
        await asyncio.sleep(1.0)  # each backend reports its deadlocks as it exits
        assert await deadlocks(conn) == before
    finally:
        await conn.close()


@pytest.mark.slow
async def test_three_replicas_directly_on_postgresql_take_a_duplicate_storm_without_deadlock(
    empty_database, replicas, signer
):
    services = replicas(empty_database, count=3)
    await assert_storm_kept_every_guarantee(empty_database, services, signer)


@pytest.mark.slow
async def test_three_replicas_through_pgbouncer_transaction_mode_keep_every_guarantee(
    empty_database, replicas, signer
):
    with PgBouncer(empty_database, pool_mode="transaction", pool_size=6) as bouncer:
        services = replicas(bouncer.url, count=3, pgbouncer=True)
        await assert_storm_kept_every_guarantee(empty_database, services, signer)
        assert "ERROR" not in bouncer.log(), bouncer.log()


@pytest.mark.slow
async def test_two_replicas_through_pgbouncer_session_mode_keep_every_guarantee(
    empty_database, replicas, signer
):
    # Session mode keeps a server session per client: the service's own settings work, once
    # PgBouncer is told to let the plan_cache_mode startup parameter through.
    with PgBouncer(
        empty_database, pool_mode="session", ignore_startup_parameters=("plan_cache_mode",)
    ) as bouncer:
        services = replicas(bouncer.url, count=2)
        await assert_storm_kept_every_guarantee(empty_database, services, signer)


async def test_a_startup_parameter_pgbouncer_refuses_is_exit_1_at_once_with_what_to_do(
    empty_database, tmp_path, gopay_key_file
):
    config = write_config(tmp_path / "receiver.toml", gopay_key_file=gopay_key_file)
    with PgBouncer(empty_database, pool_mode="transaction") as bouncer:
        svc = ServiceProcess(config, env={"RECEIVER_DATABASE_URL": bouncer.url})
        started = time.monotonic()
        with svc.start():
            assert await asyncio.to_thread(svc.wait, 20) == 1
        took = time.monotonic() - started
    assert took < 10, "waited as if the database were down"
    [line] = svc.stderr_lines()
    assert "plan_cache_mode" in line and "database.pgbouncer = true" in line, line
    assert "ignore_startup_parameters" in line


async def test_the_command_line_through_pgbouncer_transaction_mode(
    empty_database, tmp_path, gopay_key_file
):
    config = write_config(
        tmp_path / "receiver.toml", gopay_key_file=gopay_key_file, database={"pgbouncer": True}
    )
    with PgBouncer(empty_database, pool_mode="transaction", pool_size=2) as bouncer:
        env = {"RECEIVER_DATABASE_URL": bouncer.url}
        assert cli(config, env, "migrate").stdout.startswith("applied: 001_")
        assert cli(config, env, "migrate").stdout == "schema is current\n"
        for no in ("C1", "C2"):
            key = ("--provider", "gopay", "--merchant", "100001", "--out-trade-no", no)
            added = cli(config, env, "orders", "add", *key, "--amount", "1.00")
            assert added.returncode == 0, added.stderr
        listed = cli(config, env, "orders", "list")
        assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 2, listed.stderr


READ_ONLY = (
    ("orders", "list"),
    ("orders", "show", "--provider", "gopay", "--merchant", "100001", "--out-trade-no", "X"),
    ("notifications", "list"),
    ("replay", "--outcome", "unknown_order", "--dry-run"),
)


async def test_read_only_commands_on_a_database_without_the_schema_say_so_and_create_nothing(
    empty_database, tmp_path, gopay_key_file
):
    config = write_config(tmp_path / "receiver.toml", gopay_key_file=gopay_key_file)
    env = {"RECEIVER_DATABASE_URL": empty_database}
    for args in READ_ONLY:
        done = cli(config, env, *args)
        assert done.returncode == 1, (args, done.stderr)
        assert done.stderr == (
            "receiver: the database has no receiver schema: run `receiver migrate`"
            " (or start serve) first\n"
        ), args
        assert done.stdout == ""
    conn = await asyncpg.connect(empty_database)
    try:
        assert (
            await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0
        )
        # One migration short: "older than this receiver", naming what is missing.
        assert cli(config, env, "migrate").returncode == 0
        last = await conn.fetchval("SELECT max(version) FROM schema_migrations")
        await conn.execute("DELETE FROM schema_migrations WHERE version = $1", last)
        done = cli(config, env, "orders", "list")
        assert (done.returncode, done.stderr) == (
            1,
            f"receiver: the database schema is older than this receiver (missing {last}):"
            " run `receiver migrate` first\n",
        )
        assert (
            await conn.fetchval("SELECT count(*) FROM schema_migrations WHERE version = $1", last)
            == 0
        )
    finally:
        await conn.close()


def cli(config: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    import os  # noqa: PLC0415

    environ = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_")} | env
    return subprocess.run(
        [sys.executable, "-m", "receiver.run.cli", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
        check=False,
    )


async def test_migrations_wait_for_the_lock_only_when_something_is_left_to_apply(empty_database):
    holder = await asyncpg.connect(empty_database)
    conn = await asyncpg.connect(empty_database)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", database.MIGRATION_LOCK_KEY)
        migrating = asyncio.create_task(database.migrate(conn))
        await asyncio.sleep(0.5)
        assert not migrating.done()  # another migrator holds the lock: wait for it
        await holder.execute("SELECT pg_advisory_unlock($1)", database.MIGRATION_LOCK_KEY)
        applied = await asyncio.wait_for(migrating, 10)
        assert applied == [m.version for m in database.migrations()]
        await holder.execute("SELECT pg_advisory_lock($1)", database.MIGRATION_LOCK_KEY)
        # The schema is current: seen without the lock, so a held lock delays nothing.
        assert await asyncio.wait_for(database.migrate(conn), 2) == []
        # The lock is the transaction's: nothing left held in the session afterwards.
        held = await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        )
        assert held == 0
    finally:
        await conn.close()
        await holder.close()
