"""`receiver deliveries list|retry` as real processes on the test database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg

from tests.events_support import write_event
from tests.support.db import database_url
from tests.support.service_process import write_config

MakeOrder = Callable[..., Awaitable[asyncpg.Record]]

ADD_DELIVERY = """
INSERT INTO deliveries (event_id, destination, state, attempts, order_id, xid, event_at,
                        give_up_at, last_status, last_error)
SELECT id, $2, $3, 4, order_id, xid, created_at, created_at + interval '1 hour', 500, 'HTTP 500'
FROM order_events WHERE id = $1
"""


def receiver(migrated: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    config = write_config(tmp_path / "receiver.toml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_")}
    return subprocess.run(
        [sys.executable, "-m", "receiver.run.cli", *args, "--config", str(config)],
        env=env | {"RECEIVER_DATABASE_URL": migrated},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_failed_deliveries_are_listed_and_made_due_again(
    db: asyncpg.Connection, migrated: str, tmp_path: Path, make_order: MakeOrder
) -> None:
    failed = await write_event(db, (await make_order("C1"))["id"])
    done = await write_event(db, (await make_order("C2"))["id"])
    await db.execute(ADD_DELIVERY, failed, "shop", "failed")
    await db.execute(ADD_DELIVERY, done, "shop", "delivered")
    listed = receiver(migrated, tmp_path, "deliveries", "list", "--state", "failed")
    assert listed.returncode == 0, listed.stderr
    (line,) = [json.loads(x) for x in listed.stdout.splitlines()]
    assert (line["event_id"], line["state"], line["last_error"]) == (failed, "failed", "HTTP 500")
    everything = receiver(migrated, tmp_path, "deliveries", "list", "--destination", "shop")
    assert [json.loads(x)["event_id"] for x in everything.stdout.splitlines()] == [done, failed]
    retried = receiver(migrated, tmp_path, "deliveries", "retry", "--failed")
    assert retried.returncode == 0, retried.stderr
    assert [json.loads(x)["event_id"] for x in retried.stdout.splitlines()] == [failed]
    row = await db.fetchrow(
        "SELECT state, next_at <= now() AS due FROM deliveries WHERE event_id = $1", failed
    )
    assert (row["state"], row["due"]) == ("pending", True)
    again = receiver(migrated, tmp_path, "deliveries", "retry", "--event", str(done))
    assert (again.returncode, again.stdout) == (0, "")  # delivered: left alone
    assert (
        await db.fetchval("SELECT state FROM deliveries WHERE event_id = $1", done) == "delivered"
    )


async def test_retrying_an_event_without_a_delivery_fails_naming_it(
    db: asyncpg.Connection, migrated: str, tmp_path: Path
) -> None:
    proc = receiver(migrated, tmp_path, "deliveries", "retry", "--event", "999")
    assert proc.returncode == 1
    assert proc.stderr == "receiver: no delivery of event 999\n"


def test_bad_usage_exits_2(migrated: str, tmp_path: Path) -> None:
    for args in (
        ("deliveries", "list", "--limit", "0"),
        ("deliveries", "list", "--state", "lost"),
        ("deliveries", "retry"),
        ("events", "follow", "--after", "yesterday"),
        ("events", "follow", "--type", "paid"),
    ):
        proc = receiver(migrated, tmp_path, *args)
        assert proc.returncode == 2, args
        assert proc.stderr.startswith("receiver: usage:") and "Traceback" not in proc.stderr


async def test_readers_on_an_older_schema_say_so_and_never_migrate(
    migrated: str, tmp_path: Path
) -> None:
    name = f"receiver_empty_{os.getpid()}"
    admin = await asyncpg.connect(migrated)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        empty = database_url(migrated, name)
        for args in (("events", "follow", "--once"), ("deliveries", "list")):
            proc = receiver(empty, tmp_path, *args)
            assert proc.returncode == 1, proc.stderr
            assert "schema" in proc.stderr and "migrate" in proc.stderr and proc.stdout == ""
        probe = await asyncpg.connect(empty)
        try:
            assert await probe.fetchval("SELECT to_regclass('schema_migrations')") is None
        finally:
            await probe.close()
    finally:
        await admin.execute(f'DROP DATABASE "{name}"')
        await admin.close()
