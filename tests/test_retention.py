"""Retention: notifications partitioned by month, `receiver prune`, archives, the migration."""

from __future__ import annotations

import base64
import gzip
import json
import os
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from receiver.config import RetentionConfig
from receiver.store import database, retention
from receiver.store.retention import add_months, month_start, months_to_drop
from tests.support.cli import run

TODAY = datetime.now(UTC).date()
THIS_MONTH = month_start(TODAY)

INSERT_NOTE = """
INSERT INTO notifications (provider, received_at, remote_addr, headers, body, merchant_id,
                           out_trade_no, outcome, detail, source)
VALUES ('gopay', $1, '10.0.0.1', $2::jsonb, $3, '100001', $4, 'duplicate', 'why', 'notify')
RETURNING id
"""


def mid(month: date) -> datetime:
    """The middle of a month (UTC)."""
    return datetime(month.year, month.month, 15, 12, tzinfo=UTC)


async def note(db: asyncpg.Connection, month: date, n: int) -> int:
    headers = json.dumps({"x-sign": f"sig{n}", "content-type": "application/json"})
    body = f'{{"n":{n}}}'.encode() + bytes([0, 255])  # raw bytes, not only text
    nid: int = await db.fetchval(INSERT_NOTE, mid(month), headers, body, f"T{n}")
    return nid


async def partitions(db: asyncpg.Connection) -> list[str]:
    rows = await db.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'notifications'::regclass ORDER BY 1"
    )
    return [r[0] for r in rows]


async def everything(db: asyncpg.Connection) -> list[tuple[object, ...]]:
    rows = await db.fetch(
        "SELECT tableoid::regclass::text, id, received_at, headers, body, outcome"
        " FROM notifications ORDER BY id"
    )
    return [tuple(r) for r in rows]


def sha256sum_check(folder: Path, name: str) -> subprocess.CompletedProcess[str]:
    """`sha256sum -c` on an archive's digest file, as an operator runs it."""
    return subprocess.run(
        ["sha256sum", "-c", name + ".sha256"],
        cwd=folder,
        capture_output=True,
        text=True,
        check=False,
    )


# --- the pure part ----------------------------------------------------------------------------


def test_months_past_retention_are_those_before_the_kept_whole_months():
    months = [date(2026, m, 1) for m in range(1, 13)]
    assert months_to_drop(months, today=date(2026, 6, 17), keep=2) == [
        date(2026, 1, 1),
        date(2026, 2, 1),
        date(2026, 3, 1),
    ]
    assert months_to_drop(months, today=date(2026, 6, 1), keep=0) == []
    assert months_to_drop(months, today=date(2026, 1, 31), keep=1) == []
    assert add_months(date(2026, 1, 1), -1) == date(2025, 12, 1)
    assert add_months(date(2026, 12, 1), 1) == date(2027, 1, 1)


def test_partition_names_and_bounds():
    assert retention.partition_month("notifications_2026_03") == date(2026, 3, 1)
    assert retention.partition_month("notifications_default") is None
    assert retention.partition_month("notifications_2026_03_pkey") is None
    start, end = retention.bounds(date(2026, 12, 1))
    assert (start, end) == (datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))


# --- partitions ahead, and a default so an insert never fails ---------------------------------


async def test_partitions_exist_ahead_and_a_row_of_any_month_is_accepted(db):
    await retention.ensure_partitions(db, today=TODAY)
    names = await partitions(db)
    for ahead in range(retention.MONTHS_AHEAD + 1):
        assert f"notifications_{add_months(THIS_MONTH, ahead):%Y_%m}" in names
    far = add_months(THIS_MONTH, 60)
    nid = await note(db, far, 1)  # no partition of its own: the default takes it
    assert (
        await db.fetchval("SELECT tableoid::regclass::text FROM notifications WHERE id = $1", nid)
        == "notifications_default"
    )
    await retention.ensure_partitions(db, today=TODAY)  # the daily run adopts it
    assert (
        await db.fetchval("SELECT tableoid::regclass::text FROM notifications WHERE id = $1", nid)
        == f"notifications_{far:%Y_%m}"
    )
    await db.execute("SELECT receiver_notifications_drop($1::date)", far)


# --- prune ------------------------------------------------------------------------------------


@pytest.fixture
async def months(db: asyncpg.Connection) -> AsyncIterator[dict[date, list[int]]]:
    """Two notifications in each of the current month and the five before it, and an event
    pointing at one of every month's."""
    by_month: dict[date, list[int]] = {}
    # The service has run for months: each has its partition.
    await db.execute(
        "SELECT receiver_notifications_months($1::date, 2)", add_months(THIS_MONTH, -5)
    )
    order_id = await db.fetchval(
        "INSERT INTO orders (provider, merchant_id, out_trade_no, amount_minor, status)"
        " VALUES ('gopay', '100001', 'KEEP', 100, 'paid') RETURNING id"
    )
    for back in range(6):
        month = add_months(THIS_MONTH, -back)
        by_month[month] = [await note(db, month, back * 10 + i) for i in range(2)]
        await db.execute(
            "INSERT INTO order_events (order_id, from_status, to_status, notification_id)"
            " VALUES ($1, 'pending', 'paid', $2)",
            order_id,
            by_month[month][0],
        )
    yield by_month
    for back in range(2, 8):  # leave no old month behind for the next test
        month = add_months(THIS_MONTH, -back)
        if f"notifications_{month:%Y_%m}" in await partitions(db):
            await db.execute("SELECT receiver_notifications_drop($1::date)", month)


async def test_prune_drops_months_past_retention_and_keeps_the_rest(db, months, tmp_path):
    config = RetentionConfig(notifications_months=2, archive_dir=tmp_path / "archive")
    done = await retention.prune(db, config)
    gone = [add_months(THIS_MONTH, -back) for back in (5, 4, 3)]
    assert [d.month for d in done] == [f"{m:%Y-%m}" for m in gone]
    assert all(d.dropped and d.rows == 2 for d in done)
    kept = sorted(i for m, ids in months.items() if m not in gone for i in ids)
    assert [r["id"] for r in await db.fetch("SELECT id FROM notifications ORDER BY id")] == kept
    names = await partitions(db)
    assert not any(f"notifications_{m:%Y_%m}" in names for m in gone)
    # Events are never pruned, and keep the id of the notification that went.
    events = await db.fetch("SELECT notification_id FROM order_events ORDER BY id")
    assert sorted(e[0] for e in events) == sorted(ids[0] for ids in months.values())
    assert await db.fetchval("SELECT count(*) FROM orders") == 1


async def test_archives_hold_every_row_with_body_and_headers_and_verify_with_sha256sum(
    db, months, tmp_path
):
    archive = tmp_path / "archive"
    config = RetentionConfig(notifications_months=4, archive_dir=archive)
    oldest = add_months(THIS_MONTH, -5)
    expected = {
        r["id"]: r
        for r in await db.fetch("SELECT * FROM notifications WHERE id = ANY($1)", months[oldest])
    }
    [done] = await retention.prune(db, config)
    name = f"notifications-{oldest:%Y-%m}.jsonl.gz"
    assert done.archive == str(archive / name) and done.sha256
    assert sorted(p.name for p in archive.iterdir()) == [name, name + ".sha256"]
    check = sha256sum_check(archive, name)
    assert check.returncode == 0 and check.stdout.strip() == f"{name}: OK", check
    with gzip.open(archive / name, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    assert sorted(r["id"] for r in rows) == sorted(expected)
    for row in rows:
        stored = expected[row["id"]]
        assert base64.b64decode(row["body_base64"]) == stored["body"]
        assert row["headers"] == json.loads(stored["headers"])
        assert (row["outcome"], row["out_trade_no"]) == (stored["outcome"], stored["out_trade_no"])
        assert datetime.fromisoformat(row["received_at"]) == stored["received_at"]
    # A changed byte is caught by the same check.
    data = bytearray((archive / name).read_bytes())
    data[-1] ^= 1
    (archive / name).write_bytes(bytes(data))
    assert sha256sum_check(archive, name).returncode != 0


async def test_a_dry_run_changes_nothing(db, months, tmp_path):
    old = add_months(THIS_MONTH, -7)
    late = await note(db, old, 99)  # a row of a month without a partition: in the default
    before = (await partitions(db), await everything(db))
    config = RetentionConfig(notifications_months=1, archive_dir=tmp_path / "archive")
    done = await retention.prune(db, config, dry_run=True)
    assert [(d.month, d.rows, d.dropped, d.dry_run) for d in done] == [
        (f"{add_months(THIS_MONTH, -back):%Y-%m}", 1 if back == 7 else 2, False, True)
        for back in (7, 5, 4, 3, 2)
    ]
    assert done[0].archive == str(tmp_path / "archive" / f"notifications-{old:%Y-%m}.jsonl.gz")
    assert (await partitions(db), await everything(db)) == before
    assert not (tmp_path / "archive").exists()
    assert late in [r[1] for r in before[1] if r[0] == "notifications_default"]


async def test_rows_of_an_old_month_in_the_default_partition_are_pruned_with_it(
    db, months, tmp_path
):
    old = add_months(THIS_MONTH, -7)
    late = await note(db, old, 77)  # no partition for that month: the default holds it
    config = RetentionConfig(notifications_months=5, archive_dir=tmp_path)
    done = await retention.prune(db, config)
    assert [(d.month, d.rows) for d in done] == [(f"{old:%Y-%m}", 1)]
    assert await db.fetchval("SELECT count(*) FROM notifications WHERE id = $1", late) == 0


async def test_a_month_whose_archive_cannot_be_written_is_not_dropped(db, months, tmp_path):
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    config = RetentionConfig(notifications_months=4, archive_dir=blocked)
    with pytest.raises(retention.ArchiveError):
        await retention.prune(db, config)
    oldest = add_months(THIS_MONTH, -5)
    assert f"notifications_{oldest:%Y_%m}" in await partitions(db)
    assert (
        await db.fetchval("SELECT count(*) FROM notifications WHERE id = ANY($1)", months[oldest])
        == 2
    )


async def test_one_pruner_at_a_time_the_other_is_told(db, months, migrated, tmp_path):
    other = await asyncpg.connect(migrated)
    try:
        async with other.transaction():
            await other.execute("SELECT pg_advisory_xact_lock($1)", retention.RETENTION_LOCK_KEY)
            with pytest.raises(retention.PruneBusy):
                await retention.prune(db, RetentionConfig(notifications_months=1))
    finally:
        await other.close()
    assert len(await everything(db)) == 12


async def test_keep_for_ever_drops_nothing(db, months):
    assert await retention.prune(db, RetentionConfig(notifications_months=0)) == []
    assert len(await everything(db)) == 12


# --- the command ------------------------------------------------------------------------------


async def test_receiver_prune_and_its_dry_run(db, months, migrated, tmp_path):
    conf = tmp_path / "receiver.toml"
    conf.write_text(
        f'[database]\nurl = "{migrated}"\n'
        '[retention]\nnotifications_months = 3\narchive_dir = "archive"\n'
    )
    dry = run("prune", "--dry-run", "--config", str(conf), cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    planned = [json.loads(line) for line in dry.stdout.splitlines()]
    assert [(p["month"], p["dry_run"], p["dropped"]) for p in planned] == [
        (f"{add_months(THIS_MONTH, -back):%Y-%m}", True, False) for back in (5, 4)
    ]
    assert len(await everything(db)) == 12
    real = run("prune", "--config", str(conf), cwd=tmp_path)
    assert real.returncode == 0, real.stderr
    assert [json.loads(line)["dropped"] for line in real.stdout.splitlines()] == [True, True]
    assert len(await everything(db)) == 8
    assert len(list((tmp_path / "archive").glob("*.jsonl.gz"))) == 2


def test_retention_configuration_is_checked(tmp_path):
    conf = tmp_path / "receiver.toml"
    conf.write_text("[retention]\nnotifications_months = -1\n")
    bad = run("prune", "--config", str(conf), cwd=tmp_path)
    assert bad.returncode == 2
    assert "retention.notifications_months" in bad.stderr and "Traceback" not in bad.stderr


# --- the migration over a populated table -----------------------------------------------------


def admin_url(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


@pytest.fixture
async def fresh(migrated: str) -> AsyncIterator[asyncpg.Connection]:
    """A database of its own with every migration before 009 applied."""
    name = f"retention_migration_{os.getpid()}"
    admin = await asyncpg.connect(admin_url(migrated, "postgres"))
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{name}"')
    conn = await asyncpg.connect(admin_url(migrated, name))
    await conn.execute(database.CREATE_MIGRATIONS_TABLE)
    for m in database.migrations():
        if m.version >= "009":
            break
        await conn.execute(m.sql)
        await conn.execute(database.INSERT_APPLIED, m.version, m.checksum)
    try:
        yield conn
    finally:
        await conn.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_the_migration_keeps_every_row_and_id_of_a_populated_table(fresh):
    db = fresh
    order_id = await db.fetchval(
        "INSERT INTO orders (provider, merchant_id, out_trade_no, amount_minor)"
        " VALUES ('gopay', '100001', 'M1', 100) RETURNING id"
    )
    ids = []
    for back in (14, 3, 1, 0):
        month = add_months(THIS_MONTH, -back)
        for i in range(3):
            ids.append(await note(db, month, back * 10 + i))
    await db.execute("DELETE FROM notifications WHERE id = $1", ids[1])  # a gap in the ids
    await db.execute(
        "UPDATE notifications SET source = 'replay', replay_of = $1 WHERE id = $2", ids[0], ids[2]
    )
    await db.execute(
        "INSERT INTO order_events (order_id, from_status, to_status, notification_id)"
        " VALUES ($1, 'pending', 'paid', $2)",
        order_id,
        ids[6],
    )
    before = await db.fetch("SELECT * FROM notifications ORDER BY id")
    assert await database.migrate(db) == ["009_notifications_partitioned"]
    after = await db.fetch("SELECT * FROM notifications ORDER BY id")
    assert [dict(r) for r in after] == [dict(r) for r in before]
    assert await db.fetchval("SELECT notification_id FROM order_events") == ids[6]
    names = await partitions(db)
    for back in (14, 3, 1, 0, -1, -2):
        assert f"notifications_{add_months(THIS_MONTH, -back):%Y_%m}" in names
    assert "notifications_default" in names
    # New rows continue after the highest id, through the ledger's own sequence lookup.
    seq = await db.fetchval("SELECT pg_get_serial_sequence('notifications', 'id')")
    assert await db.fetchval("SELECT nextval($1)", seq) > max(ids)
    assert await note(db, THIS_MONTH, 500) > max(ids)
    # A pruned notification's events stay (no foreign key holds them back).
    await db.execute("SELECT receiver_notifications_drop($1::date)", add_months(THIS_MONTH, -1))
    assert await db.fetchval("SELECT notification_id FROM order_events") == ids[6]
