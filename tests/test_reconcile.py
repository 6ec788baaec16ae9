"""The reconciler against a real PostgreSQL: claims, answers through the ledger, isolation."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta

import aiohttp
import asyncpg
import pytest
from prometheus_client import REGISTRY

from receiver.config import Config, ReconcileConfig
from receiver.core.notification import Status
from receiver.gateways import OrderQuerier, QueryResult
from receiver.gateways.gopay import GoPayGateway
from receiver.http.app import create_app
from receiver.sources.reconcile import NOT_QUERYABLE, TIMEOUT_GRACE_S, TOO_SOON, Reconciler, Report
from receiver.store.database import create_pool
from receiver.store.ledger import Ledger
from tests.support.fake_querier import FakeQuerier, baofoo_answer, gopay_answer, plain_answer
from tests.support.gopay_signer import GoPaySigner, new_rsa_key
from tests.support.stand_in import API_KEY, merchant_key_file, start_stand_in

SCHEDULE = ReconcileConfig(
    first_after_s=300, intervals_s=(300, 600), give_up_after_s=86400, timeout_s=0.5, concurrency=4
)


@pytest.fixture
async def pool(db, migrated) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(migrated, min_size=1, max_size=6)
    yield p
    await p.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def gopay(config: Config) -> GoPayGateway:
    return GoPayGateway.from_config(config.gopay, source="tests")


def reconciler(
    pool: asyncpg.Pool,
    session: aiohttp.ClientSession,
    *queriers: OrderQuerier,
    config: ReconcileConfig = SCHEDULE,
    reports: list[Report] | None = None,
) -> Reconciler:
    return Reconciler(
        pool=pool,
        ledger=Ledger(pool),
        queriers={q.provider: q for q in queriers},
        session=session,
        config=config,
        report=(reports if reports is not None else []).append,
    )


async def aged(db: asyncpg.Connection, order: asyncpg.Record, seconds: float) -> None:
    """Pretend the order was created `seconds` ago."""
    await db.execute(
        "UPDATE orders SET created_at = now() - $2::interval WHERE id = $1",
        order["id"],
        timedelta(seconds=seconds),
    )


async def status(db: asyncpg.Connection, out_trade_no: str) -> str:
    return await db.fetchval("SELECT status FROM orders WHERE out_trade_no = $1", out_trade_no)


@pytest.mark.parametrize(
    ("said", "result", "outcome", "new_status"),
    [
        ("paid", "paid", "applied", "paid"),
        ("failed", "failed", "applied", "failed"),
        ("closed", "closed", "applied", "closed"),
    ],
)
async def test_verified_answer_is_applied_through_the_ledger_as_source_query(
    db, pool, session, make_order, gopay, signer, said, result, outcome, new_status
):
    order = await make_order("R1")
    await aged(db, order, 301)
    querier = FakeQuerier("gopay", gopay_answer(gopay, signer, said))
    [report] = await reconciler(pool, session, querier).run_pass()
    assert (report.result, report.outcome) == (result, outcome)
    assert await status(db, "R1") == new_status
    note = await db.fetchrow("SELECT * FROM notifications")
    assert (note["source"], note["outcome"], note["order_id"]) == ("query", outcome, order["id"])
    assert report.notification_id == note["id"]
    events = await db.fetch("SELECT from_status, to_status, notification_id FROM order_events")
    moved = [("pending", new_status, note["id"])] if new_status != "pending" else []
    assert [tuple(e) for e in events] == moved
    assert await db.fetchval("SELECT last_result FROM order_queries") == result


async def test_a_status_change_from_a_query_is_announced_with_notify(
    db, pool, session, make_order, gopay, signer, migrated
):
    await aged(db, await make_order("R2"), 301)
    listener = await asyncpg.connect(migrated)
    heard: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener("order_events", lambda *args: heard.put_nowait(args[3]))
    try:
        await reconciler(
            pool, session, FakeQuerier("gopay", gopay_answer(gopay, signer, "paid"))
        ).run_pass()
        event_id = await asyncio.wait_for(heard.get(), 5)
    finally:
        await listener.close()
    assert int(event_id) == await db.fetchval("SELECT id FROM order_events")


async def test_wrong_amount_in_a_verified_answer_is_stored_and_changes_nothing(
    db, pool, session, make_order, gopay, signer
):
    await aged(db, await make_order("R3"), 301)
    answer = gopay_answer(gopay, signer, "paid", amount="1.000", pay_amount="1.000")
    [report] = await reconciler(pool, session, FakeQuerier("gopay", answer)).run_pass()
    assert (report.result, report.outcome) == ("held", "amount_mismatch")
    assert await status(db, "R3") == "pending"
    assert await db.fetchval("SELECT count(*) FROM order_events") == 0


async def test_forged_answer_is_refused_stored_with_its_outcome_and_changes_nothing(
    db, pool, session, make_order, gopay
):
    await aged(db, await make_order("R4"), 301)
    forger = GoPaySigner(new_rsa_key())
    querier = FakeQuerier("gopay", gopay_answer(gopay, forger, "paid"))
    [report] = await reconciler(pool, session, querier).run_pass()
    assert (report.result, report.outcome) == ("refused", "bad_signature")
    assert await status(db, "R4") == "pending"
    note = await db.fetchrow("SELECT source, outcome FROM notifications")
    assert tuple(note) == ("query", "bad_signature")


@pytest.mark.parametrize("result", [QueryResult.NOT_FOUND, QueryResult.ERROR])
async def test_not_found_and_error_store_nothing_and_wait_for_the_next_due_time(
    db, pool, session, make_order, result
):
    await aged(db, await make_order("R5"), 301)
    querier = FakeQuerier("gopay", plain_answer(result, "said nothing useful"))
    rec = reconciler(pool, session, querier)
    [report] = await rec.run_pass()
    assert (report.result, report.outcome, report.reason) == (result, None, "said nothing useful")
    assert await db.fetchval("SELECT count(*) FROM notifications") == 0
    assert await rec.run_pass() == []  # not due again until its next schedule point
    row = await db.fetchrow("SELECT attempts, last_result FROM order_queries")
    assert tuple(row) == (1, result.value)


async def test_schedule_is_computed_from_created_at(db, pool, session, make_order, gopay, signer):
    young, due, later, stale = [await make_order(f"S{i}") for i in range(4)]
    await aged(db, young, 200)  # before its first query
    await aged(db, due, 310)
    await aged(db, later, 1250)  # past first (300), +300, +600: the last interval repeats
    await aged(db, stale, 86401)  # given up
    querier = FakeQuerier("gopay", plain_answer(QueryResult.NOT_FOUND, ""))
    await reconciler(pool, session, querier).run_pass()
    assert sorted(querier.asked) == ["S1", "S2"]
    rows = await db.fetch(
        "SELECT o.out_trade_no, q.attempts, CASE WHEN isfinite(q.next_at)"
        " THEN round(extract(epoch FROM q.next_at - o.created_at)) END AS at"
        " FROM order_queries q JOIN orders o ON o.id = q.order_id ORDER BY 1"
    )
    # The young order waits for its first point; the given-up one is retired (never due again).
    assert [tuple(r) for r in rows] == [
        ("S0", 0, 300),
        ("S1", 1, 600),
        ("S2", 1, 1800),
        ("S3", 0, None),
    ]


async def test_two_reconcilers_on_one_database_query_each_due_order_once(
    db, pool, session, make_order, migrated
):
    for i in range(30):
        await aged(db, await make_order(f"D{i}"), 301)
    other_pool = await create_pool(migrated, min_size=1, max_size=6)
    try:
        # A gateway that takes a moment, so that the passes overlap.
        first = FakeQuerier("gopay", plain_answer(QueryResult.NOT_FOUND, ""), delay_s=0.01)
        second = FakeQuerier("gopay", plain_answer(QueryResult.NOT_FOUND, ""), delay_s=0.01)
        a = reconciler(pool, session, first, config=replace(SCHEDULE, concurrency=1))
        b = reconciler(other_pool, session, second, config=replace(SCHEDULE, concurrency=1))
        await asyncio.gather(a.run_pass(), b.run_pass(), a.run_pass(), b.run_pass())
    finally:
        await other_pool.close()
    asked = first.asked + second.asked
    assert sorted(asked) == sorted(f"D{i}" for i in range(30))  # each once, none left out
    assert await db.fetchval("SELECT sum(attempts) FROM order_queries") == 30


async def test_a_hanging_gateway_slows_nothing_else(db, pool, session, make_order, gopay, signer):
    for i in range(3):
        await aged(db, await make_order(f"H{i}"), 301)
    await aged(db, await make_order("B1", provider="baofoo"), 301)
    hanging = FakeQuerier("gopay", gopay_answer(gopay, signer, "paid"), hang=True)
    baofoo = FakeQuerier("baofoo", baofoo_answer("Y"))
    finished: dict[str, float] = {}
    started = time.monotonic()
    reports: list[Report] = []

    def note(report: Report) -> None:
        reports.append(report)
        finished.setdefault(report.out_trade_no, time.monotonic() - started)

    rec = reconciler(pool, session, hanging, baofoo)
    rec._report = note
    await rec.run_pass()
    assert finished["B1"] < 0.4  # answered while GoPay's queries hung
    assert await status(db, "B1") == "paid"
    gopay_reports = [r for r in reports if r.provider == "gopay"]
    assert {(r.result, r.outcome) for r in gopay_reports} == {("error", None)}
    assert all("no answer within 0.5 s" in r.reason for r in gopay_reports)
    # Two of GoPay's share of slots: three hung queries take two rounds of timeout + grace.
    assert max(finished.values()) < 2 * (0.5 + TIMEOUT_GRACE_S) + 0.5


async def test_order_form_queries_now_and_baofoo_at_most_once_a_minute(
    db, pool, session, make_order
):
    await make_order("B2", provider="baofoo")  # not due yet: --order asks anyway
    await make_order("G2")
    baofoo = FakeQuerier("baofoo", baofoo_answer("P"))
    gopay = FakeQuerier("gopay", plain_answer(QueryResult.NOT_FOUND, ""))
    rec = reconciler(pool, session, baofoo, gopay)
    first = await rec.query_now("baofoo", "100000178", "B2")
    second = await rec.query_now("baofoo", "100000178", "B2")
    assert (first.result, first.outcome) == ("pending", "noop")
    assert (second.result, second.outcome) == (TOO_SOON, None)
    assert baofoo.asked == ["B2"]
    await rec.query_now("gopay", "100001", "G2")
    await rec.query_now("gopay", "100001", "G2")
    assert gopay.asked == ["G2", "G2"]


async def test_baofoo_schedule_keeps_a_minute_between_queries(db, pool, session, make_order):
    order = await make_order("B3", provider="baofoo")
    await aged(db, order, 3)
    fast = replace(SCHEDULE, first_after_s=1, intervals_s=(1,))
    querier = FakeQuerier("baofoo", plain_answer(QueryResult.NOT_FOUND, ""))
    await reconciler(pool, session, querier, config=fast).run_pass()
    gap = await db.fetchval("SELECT extract(epoch FROM next_at - last_at) FROM order_queries")
    assert 59 <= gap <= 61


async def test_order_without_channel_is_reported_not_queryable(db, pool, session, make_order):
    await aged(db, await make_order("N1", channel="none"), 301)
    querier = FakeQuerier("gopay", plain_answer(QueryResult.NOT_FOUND, ""))
    [report] = await reconciler(pool, session, querier).run_pass()
    assert report.result == NOT_QUERYABLE and "default_channel" in report.reason
    assert querier.asked == []


async def test_only_pending_orders_are_queried(db, pool, session, make_order, gopay, signer):
    paid = await make_order("P1")
    await aged(db, paid, 301)
    await db.execute("UPDATE orders SET status = 'paid' WHERE id = $1", paid["id"])
    querier = FakeQuerier("gopay", gopay_answer(gopay, signer, "paid"))
    assert await reconciler(pool, session, querier).run_pass() == []


FAST = replace(SCHEDULE, first_after_s=1, intervals_s=(1,))


async def test_serve_reconciles_in_the_background(
    db, config, aiohttp_client, make_order, gopay, signer
):
    await aged(db, await make_order("BG1"), 2)
    querier = FakeQuerier("gopay", gopay_answer(gopay, signer, "paid"))
    app = create_app(replace(config, reconcile=FAST), queriers={"gopay": querier})
    await aiohttp_client(app)
    async with asyncio.timeout(10):
        while await status(db, "BG1") != "paid":  # noqa: ASYNC110 - polling the database
            await asyncio.sleep(0.1)
    assert await db.fetchval("SELECT source FROM notifications") == "query"


async def test_a_hanging_gateway_does_not_delay_shutdown(
    db, config, aiohttp_client, make_order, gopay, signer
):
    await aged(db, await make_order("BG2"), 2)
    querier = FakeQuerier("gopay", gopay_answer(gopay, signer, "paid"), hang=True)
    slow = replace(FAST, timeout_s=60)
    client = await aiohttp_client(
        create_app(replace(config, reconcile=slow), queriers={"gopay": querier})
    )
    async with asyncio.timeout(10):
        while not querier.asked:  # noqa: ASYNC110 - the fake has no event to wait on
            await asyncio.sleep(0.05)
    started = time.monotonic()
    await client.close()
    assert time.monotonic() - started < 2


async def test_serve_runs_no_reconciler_when_disabled(db, config, aiohttp_client, make_order):
    await aged(db, await make_order("BG3"), 2)
    querier = FakeQuerier("gopay", plain_answer(QueryResult.NOT_FOUND, ""))
    off = replace(FAST, enabled=False)
    await aiohttp_client(create_app(replace(config, reconcile=off), queriers={"gopay": querier}))
    await asyncio.sleep(1.5)
    assert querier.asked == []


async def test_two_reconciler_processes_query_each_due_order_once(db, make_order, migrated):
    for i in range(40):
        await aged(db, await make_order(f"PP{i}"), 301)
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.support.reconcile_process",
            migrated,
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outputs = await asyncio.gather(*(p.communicate() for p in procs))
    assert [p.returncode for p in procs] == [0, 0]
    asked = [json.loads(out) for out, _ in outputs]
    assert sorted(asked[0] + asked[1]) == sorted(f"PP{i}" for i in range(40))
    assert await db.fetchval("SELECT sum(attempts) FROM order_queries") == 40


async def test_serve_recovers_a_lost_payment_from_the_gateways_order_query(
    db, config, aiohttp_client, aiohttp_server, make_order, gopay_key, baofoo_md5_key, tmp_path
):
    stand_in = await start_stand_in(aiohttp_server, platform_key=gopay_key, md5_key=baofoo_md5_key)
    [merchant] = config.gopay.merchants
    asking = replace(
        merchant,
        private_key=merchant_key_file(tmp_path),
        api_key=API_KEY,
        default_channel="gopay_banktransfer",
    )
    live = replace(
        config,
        gopay=replace(config.gopay, merchants=(asking,), api_url=stand_in.base_url),
        baofoo=replace(config.baofoo, query_url=f"{stand_in.base_url}/order/query"),
        reconcile=FAST,
    )
    await aged(db, await make_order("E1"), 2)
    await aged(db, await make_order("E2", provider="baofoo"), 2)
    stand_in.pay("gopay", "E1")  # paid; the notification never came
    stand_in.pay("baofoo", "E2", status=Status.FAILED)
    await aiohttp_client(create_app(live))  # the real queriers, built from the configuration
    async with asyncio.timeout(15):
        while await db.fetchval("SELECT count(*) FROM order_events") < 2:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    rows = await db.fetch(
        "SELECT o.out_trade_no, o.status, n.source FROM order_events e"
        " JOIN orders o ON o.id = e.order_id JOIN notifications n ON n.id = e.notification_id"
        " ORDER BY 1"
    )
    assert [tuple(r) for r in rows] == [("E1", "paid", "query"), ("E2", "failed", "query")]


async def test_each_query_is_counted_by_result_and_its_stored_answer_by_source(
    db, pool, session, make_order, gopay, signer
):
    await aged(db, await make_order("RM1"), 301)
    querier = FakeQuerier("gopay", gopay_answer(gopay, signer, "paid"))

    def count(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, {"provider": "gopay", **labels}) or 0.0

    queried = count("receiver_reconcile_queries_total", result="paid")
    applied = count("receiver_notifications_total", outcome="applied", source="query")
    await reconciler(pool, session, querier).run_pass()
    assert count("receiver_reconcile_queries_total", result="paid") - queried == 1
    assert count("receiver_notifications_total", outcome="applied", source="query") - applied == 1
