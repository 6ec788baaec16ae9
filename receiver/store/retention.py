"""Retention: `notifications` is partitioned by month of `received_at` (sql/009); months past
`[retention] notifications_months` are dropped whole, each archived first when `archive_dir` is
set, and partitions are created ahead of the rows that will need them.

One month at a time, in one transaction that holds `RETENTION_LOCK_KEY` (a transaction-level
advisory lock, so it works through a transaction pooler too): another process that finds the
lock taken leaves pruning to it. The month is held still (SHARE lock on its partition: other
months are written as usual), counted, archived, the archive read back and checked against its
digest and count, and only then dropped. Anything that goes wrong rolls the month back: it stays.

Archives: `notifications-YYYY-MM.jsonl.gz`, one JSON object a line (every column; `headers` as
stored; `body_base64`: the raw body), and `notifications-YYYY-MM.jsonl.gz.sha256` beside it in
`sha256sum`'s format, so `sha256sum -c` verifies it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import asyncpg

from receiver.config import RetentionConfig
from receiver.store.database import CONNECTION_ERRORS

RETENTION_LOCK_KEY = 0x7265636569767270  # "receivrp": one pruner at a time across replicas
MONTHS_AHEAD = 2  # partitions exist this many months past the current one
ARCHIVE_BATCH = 1000  # rows fetched and written at a time
PRUNE_INTERVAL_S = 86400.0  # serve prunes once a day

_PARTITION = re.compile(r"notifications_(\d{4})_(\d{2})")

# --- SQL --------------------------------------------------------------------------------------

ENSURE_AHEAD = "SELECT receiver_notifications_months($1::date, $2)"
# Rows that went to the default partition (their month had none) move into partitions of their
# own, so that every month is dropped whole.
ADOPT_DEFAULT = """
SELECT receiver_notifications_month(m::date)
FROM (SELECT DISTINCT date_trunc('month', received_at AT TIME ZONE 'UTC') AS m
      FROM notifications_default) AS d
"""
LIST_PARTITIONS = """
SELECT c.relname
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'notifications'::regclass
"""
DEFAULT_MONTHS = """
SELECT DISTINCT (date_trunc('month', received_at AT TIME ZONE 'UTC'))::date AS m
FROM notifications_default
"""
TRY_LOCK = "SELECT pg_try_advisory_xact_lock($1)"
HOLD = "SELECT receiver_notifications_hold($1::date)"
COUNT_MONTH = """
SELECT count(*) FROM notifications WHERE received_at >= $1 AND received_at < $2
"""
# Every column but the body as JSON (whatever columns later migrations add), and the body.
ARCHIVE_ROWS = """
SELECT (to_jsonb(n) - 'body')::text AS doc, n.body
FROM notifications n
WHERE n.received_at >= $1 AND n.received_at < $2
ORDER BY n.id
"""
DROP_MONTH = "SELECT receiver_notifications_drop($1::date)"


# --- the pure part ----------------------------------------------------------------------------


def month_start(day: date) -> date:
    """The first of `day`'s month."""
    return day.replace(day=1)


def add_months(month: date, count: int) -> date:
    """The first of the month `count` months after (or before) `month`'s."""
    index = month.year * 12 + month.month - 1 + count
    return date(index // 12, index % 12 + 1, 1)


def months_to_drop(months: Sequence[date], *, today: date, keep: int) -> list[date]:
    """The months past retention, oldest first: all before the `keep` whole months that precede
    the current one. `keep` 0 keeps everything."""
    if keep <= 0:
        return []
    cutoff = add_months(month_start(today), -keep)
    return sorted(m for m in set(months) if m < cutoff)


def partition_month(name: str) -> date | None:
    """The month a partition named `notifications_YYYY_MM` holds; None for any other table."""
    found = _PARTITION.fullmatch(name)
    return date(int(found[1]), int(found[2]), 1) if found else None


def archive_name(month: date) -> str:
    """The archive's file name for `month`."""
    return f"notifications-{month:%Y-%m}.jsonl.gz"


def bounds(month: date) -> tuple[datetime, datetime]:
    """The month's `received_at` range, UTC, as the partition's bounds."""
    start = datetime(month.year, month.month, 1, tzinfo=UTC)
    end = add_months(month, 1)
    return start, datetime(end.year, end.month, 1, tzinfo=UTC)


# --- what a prune reports ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class MonthPruned:
    """One month past retention: what was (or, in a dry run, would be) done with it."""

    month: str  # YYYY-MM
    rows: int
    archive: str | None = None  # the archive's path (in a dry run: where it would go)
    sha256: str | None = None
    dropped: bool = False
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The report as one JSON object."""
        return asdict(self)


class PruneBusy(Exception):
    """Another process holds the retention lock: it is pruning."""


class ArchiveError(Exception):
    """An archive could not be written, or did not read back as written: the month stays."""


# --- the shell --------------------------------------------------------------------------------


async def ensure_partitions(conn: asyncpg.Connection, *, today: date) -> None:
    """Partitions for this month and `MONTHS_AHEAD` more; rows in the default adopted."""
    await conn.execute(ENSURE_AHEAD, month_start(today), MONTHS_AHEAD)
    await conn.execute(ADOPT_DEFAULT)


async def prune(
    conn: asyncpg.Connection,
    config: RetentionConfig,
    *,
    dry_run: bool = False,
    today: date | None = None,
) -> list[MonthPruned]:
    """Apply `[retention]` now: drop (archiving first) every month past retention, oldest first.

    A dry run reads only: it creates, moves and drops nothing. Raises PruneBusy when another
    process prunes, ArchiveError when an archive failed (the months before it are done).
    """
    today = today or datetime.now(UTC).date()
    if not dry_run:
        async with conn.transaction():
            await _lock(conn)
            await ensure_partitions(conn, today=today)
    months = months_to_drop(await _months(conn), today=today, keep=config.notifications_months)
    done = []
    for month in months:
        if dry_run:
            done.append(await _preview(conn, month, config.archive_dir))
        else:
            done.append(await _prune_month(conn, month, config.archive_dir))
    return done


async def _lock(conn: asyncpg.Connection) -> None:
    if not await conn.fetchval(TRY_LOCK, RETENTION_LOCK_KEY):
        raise PruneBusy("another process is pruning notifications")


async def _months(conn: asyncpg.Connection) -> list[date]:
    names = [r["relname"] for r in await conn.fetch(LIST_PARTITIONS)]
    months = [m for m in map(partition_month, names) if m is not None]
    return months + [r["m"] for r in await conn.fetch(DEFAULT_MONTHS)]


async def _preview(conn: asyncpg.Connection, month: date, archive_dir: Path | None) -> MonthPruned:
    rows = await conn.fetchval(COUNT_MONTH, *bounds(month))
    where = str(archive_dir / archive_name(month)) if archive_dir else None
    return MonthPruned(month=f"{month:%Y-%m}", rows=rows, archive=where, dry_run=True)


async def _prune_month(
    conn: asyncpg.Connection, month: date, archive_dir: Path | None
) -> MonthPruned:
    async with conn.transaction():
        await _lock(conn)
        if month not in await _months(conn):
            return MonthPruned(month=f"{month:%Y-%m}", rows=0)  # another process dropped it
        await conn.execute(HOLD, month)
        rows = await conn.fetchval(COUNT_MONTH, *bounds(month))
        path, digest = None, None
        if archive_dir is not None:
            path = archive_dir / archive_name(month)
            digest = await _archive(conn, month, path, rows=rows)
        await conn.execute(DROP_MONTH, month)
    return MonthPruned(
        month=f"{month:%Y-%m}",
        rows=rows,
        archive=None if path is None else str(path),
        sha256=digest,
        dropped=True,
    )


async def _archive(conn: asyncpg.Connection, month: date, path: Path, *, rows: int) -> str:
    """Write the month's archive and its digest file; read both back; the digest."""
    partial = path.with_name(path.name + ".partial")
    try:
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        written = await _write_rows(conn, month, partial)
        if written != rows:
            raise ArchiveError(f"{path.name}: {written} rows written, {rows} in the month")
        digest = await asyncio.to_thread(_seal, partial, path)
        await asyncio.to_thread(verify_archive, path, rows=rows)
    except OSError as exc:
        raise ArchiveError(f"{path}: {exc.strerror or exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            partial.unlink()
    return digest


async def _write_rows(conn: asyncpg.Connection, month: date, partial: Path) -> int:
    """The month's rows to `partial`, gzip'd JSON lines, a batch at a time off the event loop."""
    count = 0
    out = await asyncio.to_thread(gzip.GzipFile, partial, "wb")
    try:
        lines: list[bytes] = []
        async for record in conn.cursor(ARCHIVE_ROWS, *bounds(month), prefetch=ARCHIVE_BATCH):
            lines.append(archive_line(record["doc"], record["body"]))
            if len(lines) >= ARCHIVE_BATCH:
                count += await asyncio.to_thread(_write_lines, out, lines)
                lines = []
        count += await asyncio.to_thread(_write_lines, out, lines)
    finally:
        await asyncio.to_thread(_close, out)
    return count


def archive_line(doc: str, body: bytes) -> bytes:
    """One archived row: its columns as stored, and its raw body in base64."""
    row = json.loads(doc)
    row["body_base64"] = base64.b64encode(body).decode("ascii")
    return json.dumps(row, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def _write_lines(out: gzip.GzipFile, lines: list[bytes]) -> int:
    out.write(b"".join(lines))
    return len(lines)


def _close(out: gzip.GzipFile) -> None:
    out.close()


def _seal(partial: Path, path: Path) -> str:
    """Make the written archive durable under its name, with its digest file beside it."""
    _fsync(partial)
    digest = file_sha256(partial)
    os.replace(partial, path)
    digest_file = path.with_name(path.name + ".sha256")
    digest_file.write_text(f"{digest}  {path.name}\n", encoding="ascii")
    _fsync(digest_file)
    _fsync(path.parent)
    return digest


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, in hex."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_archive(path: Path, *, rows: int) -> None:
    """The archive matches its digest file and holds `rows` whole lines; else ArchiveError."""
    digest_file = path.with_name(path.name + ".sha256")
    recorded = digest_file.read_text(encoding="ascii").split()
    if recorded != [file_sha256(path), path.name]:
        raise ArchiveError(f"{path.name}: does not match {digest_file.name}")
    try:
        found = sum(1 for _ in _lines(path))
    except (EOFError, gzip.BadGzipFile, json.JSONDecodeError) as exc:
        raise ArchiveError(f"{path.name}: unreadable: {exc}") from exc
    if found != rows:
        raise ArchiveError(f"{path.name}: {found} rows read back, {rows} in the month")


def _lines(path: Path) -> Iterator[dict[str, Any]]:
    with gzip.open(path, "rb") as f:
        for line in f:
            yield json.loads(line)


# --- serve's daily run ------------------------------------------------------------------------


async def prune_daily(pool: asyncpg.Pool, config: RetentionConfig, *, log: Any) -> None:
    """serve: create partitions ahead and apply retention now and then once a day, forever.
    Several processes may run this: the lock makes the others skip."""
    while True:
        try:
            async with pool.acquire() as conn:
                for month in await prune(conn, config):
                    log.info("notifications_pruned", **month.as_dict())
        except PruneBusy:
            pass  # another process prunes today
        except (ArchiveError, asyncpg.PostgresError, *CONNECTION_ERRORS) as exc:
            log.warning("notifications_prune_failed", reason=str(exc))
        except Exception:  # a bug must not stop retention for good, nor serve
            log.exception("notifications_prune_error")
        await asyncio.sleep(PRUNE_INTERVAL_S)
