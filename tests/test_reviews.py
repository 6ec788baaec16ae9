"""Money that does not match is held for a person: reviews opened by the ledger, whatever the
source (notification, order query, replay), and closed only by `orders resolve --review`.

Real PostgreSQL, the receiver over real HTTP, the stand-in gateway on a real socket answering
order queries as the seed documents them (GoPay's reply carries no `pay_amount`).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from receiver.config import Config, ReconcileConfig
from receiver.gateways.queriers import build_queriers
from receiver.simulate.payments import Payment
from receiver.sources.reconcile import Reconciler, Report
from receiver.store import database, ops
from receiver.store.database import create_pool
from receiver.store.ledger import Ledger
from tests.conftest import BAOFOO_MEMBER, BAOFOO_TERMINAL, GOPAY_MCHID
from tests.support.baofoo_signer import baofoo_fields, sign_baofoo
from tests.support.cli import config_file, run
from tests.support.gateways import FAIL, charge
from tests.support.gateways import post as post_gopay
from tests.support.gateways import post_form as post_baofoo
from tests.support.stand_in import API_KEY, StandIn, merchant_key_file, start_stand_in

SCHEDULE = ReconcileConfig(first_after_s=300, intervals_s=(300,), timeout_s=2, concurrency=2)


@pytest.fixture
async def pool(db, migrated) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(migrated, min_size=1, max_size=6)
    yield p
    await p.close()


@pytest.fixture
def cli(migrated: str, tmp_path: Path, gopay_key_file: Path, baofoo_md5_key: str) -> Any:
    """`receiver ...` as an operator runs it, on the test database."""
    conf = config_file(tmp_path, migrated, gopay_key_file, baofoo_md5_key)

    def receiver(*args: str) -> subprocess.CompletedProcess[str]:
        return run(*args, "--config", str(conf), cwd=tmp_path)

    return receiver


@pytest.fixture
async def stand_in(aiohttp_server, gopay_key, baofoo_md5_key) -> StandIn:
    return await start_stand_in(aiohttp_server, platform_key=gopay_key, md5_key=baofoo_md5_key)


def asking(config: Config, tmp_path: Path, base_url: str) -> Config:
    """`config` with order queries to `base_url` for both gateways."""
    [merchant] = config.gopay.merchants
    merchant = replace(
        merchant,
        private_key=merchant_key_file(tmp_path),
        api_key=API_KEY,
        default_channel="gopay_banktransfer",
    )
    return replace(
        config,
        gopay=replace(config.gopay, merchants=(merchant,), api_url=base_url),
        baofoo=replace(config.baofoo, query_url=f"{base_url}/order/query"),
    )


@pytest.fixture
async def ask(
    pool: asyncpg.Pool, config: Config, tmp_path: Path, stand_in: StandIn
) -> AsyncIterator[Any]:
    """Query one order now, through the real queriers, the stand-in and the ledger."""
    live = asking(config, tmp_path, stand_in.base_url)
    async with aiohttp.ClientSession() as session:
        reconciler = Reconciler(
            pool=pool,
            ledger=Ledger(pool),
            queriers=build_queriers(live),
            session=session,
            config=SCHEDULE,
        )

        async def query(provider: str, out_trade_no: str) -> Report:
            merchant = GOPAY_MCHID if provider == "gopay" else BAOFOO_MEMBER
            return await reconciler.query_now(provider, merchant, out_trade_no)

        yield query


async def reviews(db: asyncpg.Connection) -> list[tuple[Any, ...]]:
    rows = await db.fetch(
        "SELECT reason, amount_minor, currency, resolved_at IS NULL AS open FROM reviews"
        " ORDER BY id"
    )
    return [tuple(r) for r in rows]


async def order(db: asyncpg.Connection, out_trade_no: str) -> tuple[Any, ...]:
    row = await db.fetchrow(
        "SELECT status, paid_amount_minor, needs_review FROM orders WHERE out_trade_no = $1",
        out_trade_no,
    )
    return tuple(row)


def gopay_payment(out_trade_no: str, *, amount_minor: int = 10000, **kw: Any) -> Payment:
    return Payment(
        provider="gopay",
        merchant_id=GOPAY_MCHID,
        out_trade_no=out_trade_no,
        amount_minor=amount_minor,
        **kw,
    )


# --- GoPay: a notification held, then the order query (which carries no pay_amount) --------


@pytest.mark.parametrize(("paid", "paid_minor"), [("50.000", 5000), ("150.000", 15000)])
async def test_an_underpayment_or_overpayment_then_the_order_query_is_held_not_credited(
    client, db, signer, make_order, stand_in, ask, paid, paid_minor
):
    await make_order("U1")
    assert await post_gopay(client, signer, charge("U1", pay_amount=paid)) == (422, FAIL)
    assert await order(db, "U1") == ("pending", None, True)
    assert await reviews(db) == [("amount_mismatch", paid_minor, "CNY", True)]
    detail = await db.fetchval("SELECT detail FROM reviews")
    assert f"paid {paid_minor // 100}.00 CNY for an order of 100.00 CNY" in detail
    note_id = await db.fetchval("SELECT id FROM notifications")
    assert await db.fetchval("SELECT notification_id FROM reviews") == note_id

    # The customer's payment as GoPay's order query sees it: status 2, amount, no pay_amount.
    stand_in.gateway.hold(gopay_payment("U1", paid_minor=paid_minor))
    report = await ask("gopay", "U1")
    assert (report.result, report.outcome, report.to_status) == ("held", "amount_mismatch", None)
    body = await db.fetchval("SELECT body FROM notifications WHERE source = 'query'")
    assert b'"status":"2"' in body and b"pay_amount" not in body
    assert await order(db, "U1") == ("pending", None, True)
    assert await db.fetchval("SELECT count(*) FROM order_events") == 0
    held = [("amount_mismatch", paid_minor, "CNY", True), ("amount_mismatch", 10000, "CNY", True)]
    assert await reviews(db) == held

    # The gateway's retries and the next queries open no more reviews.
    await db.execute("UPDATE order_queries SET last_at = now() - interval '1 hour'")
    assert (await ask("gopay", "U1")).result == "held"
    assert await post_gopay(client, signer, charge("U1", pay_amount=paid)) == (422, FAIL)
    assert await reviews(db) == held


async def test_a_query_settles_an_order_whose_review_a_person_resolved(
    client, db, signer, make_order, stand_in, ask
):
    await make_order("U2")
    assert await post_gopay(client, signer, charge("U2", pay_amount="50.000")) == (422, FAIL)
    [review_id] = [r["id"] for r in await db.fetch("SELECT id FROM reviews")]
    async with db.transaction():
        await ops.resolve_reviews(db, review_ids=[review_id], note="customer paid the rest")
    stand_in.gateway.hold(gopay_payment("U2"))
    report = await ask("gopay", "U2")
    assert (report.result, report.outcome) == ("paid", "applied")
    assert await order(db, "U2") == ("paid", 10000, False)


async def test_result_msg_other_than_success_around_a_signed_paid_charge_is_malformed(
    client, db, signer, make_order
):
    await make_order("RM1")
    ch = charge("RM1")
    body, headers = signer.notify(ch)
    body = body.replace(b'"result_msg":"SUCCESS"', b'"result_msg":"FAIL"')
    assert b'"result_msg":"FAIL"' in body
    resp = await client.post("/notify/gopay", data=body, headers=headers)
    assert (resp.status, await resp.read()) == (400, FAIL)
    note = await db.fetchrow("SELECT outcome, detail FROM notifications")
    assert tuple(note) == ("malformed", "result_msg is not SUCCESS")
    assert await order(db, "RM1") == ("pending", None, False)


# --- Baofoo: the prepaid card reported twice, the card chosen at the cashier ----------------


async def test_a_card_payment_reported_again_with_other_money_opens_a_review(
    client, db, make_order, stand_in, ask, baofoo_md5_key
):
    await make_order("C1", provider="baofoo", channel="103")  # a prepaid card PayID
    stand_in.gateway.hold(
        Payment(
            provider="baofoo",
            merchant_id=BAOFOO_MEMBER,
            out_trade_no="C1",
            amount_minor=10000,
            paid_minor=3000,
            terminal_id=BAOFOO_TERMINAL,
        )
    )
    report = await ask("baofoo", "C1")
    assert (report.result, report.outcome) == ("paid", "applied")
    assert await order(db, "C1") == ("paid", 3000, False)

    fields = sign_baofoo(baofoo_fields(TransID="C1", FactMoney="7000"), baofoo_md5_key)
    assert await post_baofoo(client, fields) == (200, b"OK")  # acknowledged: a duplicate
    assert await order(db, "C1") == ("paid", 3000, True)  # the recorded amount stays
    assert await reviews(db) == [("paid_amount_differs", 7000, "CNY", True)]
    row = await db.fetchrow(
        "SELECT n.outcome, r.detail FROM reviews r JOIN notifications n ON n.id = r.notification_id"
    )
    assert row["outcome"] == "duplicate"
    assert "reported paid 70.00 CNY" in row["detail"] and "recorded paid 30.00 CNY" in row["detail"]
    # Baofoo's retry of the same notification opens no second review.
    assert await post_baofoo(client, fields) == (200, b"OK")
    assert len(await reviews(db)) == 1


async def test_a_cashier_mode_card_payment_that_pays_less_is_held_with_a_review(
    client, db, make_order, baofoo_md5_key
):
    await make_order("C2", provider="baofoo")  # no channel: the card was chosen at the cashier
    fields = sign_baofoo(baofoo_fields(TransID="C2", FactMoney="3000"), baofoo_md5_key)
    assert await post_baofoo(client, fields) == (422, b"FAIL")
    assert await order(db, "C2") == ("pending", None, True)
    assert await reviews(db) == [("amount_mismatch", 3000, "CNY", True)]


async def test_a_late_payment_opens_an_applied_late_review(client, db, signer, make_order):
    await make_order("L1")
    await db.execute("UPDATE orders SET status = 'closed'")
    assert (await post_gopay(client, signer, charge("L1")))[0] == 200
    assert await order(db, "L1") == ("paid", 10000, True)
    assert await reviews(db) == [("applied_late", 10000, "CNY", True)]


# --- resolving: exactly the named reviews, and nothing opened after the person looked -------


async def test_resolving_one_of_two_reviews_leaves_the_other_open(
    client, db, signer, make_order, cli
):
    await make_order("R1")
    assert await post_gopay(client, signer, charge("R1", pay_amount="50.000")) == (422, FAIL)
    shown = cli(
        "orders", "show", "--provider", "gopay", "--merchant", GOPAY_MCHID, "--out-trade-no", "R1"
    )
    [seen] = json.loads(shown.stdout)["reviews"]
    assert set(seen) == {
        "id",
        "reason",
        "detail",
        "notification_id",
        "opened_at",
        "resolved_at",
        "note",
    }
    # A second review opens after the person looked.
    assert await post_gopay(client, signer, charge("R1", pay_amount="60.000")) == (422, FAIL)
    done = cli("orders", "resolve", "--review", str(seen["id"]), "--note", "refunded 50")
    assert done.returncode == 0, done.stderr
    assert await order(db, "R1") == ("pending", None, True)
    assert await reviews(db) == [
        ("amount_mismatch", 5000, "CNY", False),
        ("amount_mismatch", 6000, "CNY", True),
    ]


async def test_a_late_payment_between_show_and_resolve_stays_flagged(
    client, db, signer, make_order, cli
):
    await make_order("R2")
    await db.execute("UPDATE orders SET status = 'closed'")
    # An earlier review of the closed order (money that arrived before it was closed and was
    # refunded): what the person is looking at.
    await db.execute(
        "INSERT INTO reviews (order_id, reason, amount_minor, currency, detail)"
        " SELECT id, 'paid_amount_differs', 500, 'CNY', 'earlier' FROM orders"
    )
    key = ("--provider", "gopay", "--merchant", GOPAY_MCHID, "--out-trade-no", "R2")
    [seen] = json.loads(cli("orders", "show", *key).stdout)["reviews"]
    # The late payment lands while the person reads.
    assert (await post_gopay(client, signer, charge("R2")))[0] == 200
    done = cli("orders", "resolve", "--review", str(seen["id"]), "--note", "refunded")
    assert done.returncode == 0, done.stderr
    assert await order(db, "R2") == ("paid", 10000, True)
    assert await reviews(db) == [
        ("paid_amount_differs", 500, "CNY", False),
        ("applied_late", 10000, "CNY", True),
    ]
    listed = cli("orders", "list", "--needs-review")
    [line] = [json.loads(x) for x in listed.stdout.splitlines()]
    assert [r["reason"] for r in line["open_reviews"]] == ["applied_late"]


async def test_a_review_committed_while_resolve_waits_keeps_the_flag(pool, db, make_order):
    """The ledger opens a review and holds its transaction open; `resolve` of another review of
    the order starts meanwhile and commits after it: the flag must stay set."""
    row = await make_order("RR1")
    first = await db.fetchval(
        "INSERT INTO reviews (order_id, reason, amount_minor) VALUES ($1, 'applied_late', 1)"
        " RETURNING id",
        row["id"],
    )
    async with pool.acquire() as ledger_conn, pool.acquire() as operator_conn:
        opening = ledger_conn.transaction()
        await opening.start()
        await ledger_conn.execute(
            "INSERT INTO reviews (order_id, reason, amount_minor)"
            " VALUES ($1, 'paid_amount_differs', 2)",
            row["id"],
        )
        resolving = asyncio.create_task(
            ops.resolve_reviews(operator_conn, review_ids=[first], note="seen")
        )
        await asyncio.sleep(0.3)  # resolve has closed its review and waits for the order
        assert not resolving.done()
        await opening.commit()
        await resolving
    assert await db.fetchval("SELECT needs_review FROM orders") is True
    assert await reviews(db) == [
        ("applied_late", 1, None, False),
        ("paid_amount_differs", 2, None, True),
    ]


async def test_resolving_races_a_new_review_and_never_clears_its_flag(pool, db, make_order):
    """Resolve and a new review, concurrently, many times: whichever commits first, the flag
    is true while a review is open."""
    for i in range(20):
        row = await make_order(f"RR{i}")
        first = await db.fetchval(
            "INSERT INTO reviews (order_id, reason, amount_minor) VALUES ($1, 'applied_late', 1)"
            " RETURNING id",
            row["id"],
        )

        async def resolve(first: int = first) -> None:
            async with pool.acquire() as conn:
                await ops.resolve_reviews(conn, review_ids=[first], note="seen")

        async def open_another(order_id: int = row["id"]) -> None:
            async with pool.acquire() as conn:
                await conn.execute(
                    "INSERT INTO reviews (order_id, reason, amount_minor)"
                    " VALUES ($1, 'paid_amount_differs', 2)",
                    order_id,
                )

        await asyncio.gather(resolve(), open_another())
        flagged = await db.fetchval("SELECT needs_review FROM orders WHERE id = $1", row["id"])
        assert flagged is True, i


async def test_resolve_is_all_or_nothing(db, make_order, cli):
    row = await make_order("R3")
    ids = [
        await db.fetchval(
            "INSERT INTO reviews (order_id, reason, amount_minor) VALUES ($1, $2, 1) RETURNING id",
            row["id"],
            reason,
        )
        for reason in ("applied_late", "paid_amount_differs")
    ]
    refused = cli("orders", "resolve", "--review", str(ids[0]), "--review", "99999", "--note", "x")
    assert refused.returncode == 1 and "no review 99999: nothing changed" in refused.stderr
    assert await db.fetchval("SELECT count(*) FROM reviews WHERE resolved_at IS NULL") == 2
    both = [str(i) for i in ids]
    done = cli("orders", "resolve", "--review", both[0], "--review", both[1], "--note", "ok")
    assert done.returncode == 0, done.stderr
    assert await order(db, "R3") == ("pending", None, False)
    assert await db.fetchval("SELECT array_agg(note) FROM reviews") == ["ok", "ok"]


async def test_a_replay_of_a_held_notification_opens_no_second_review(
    client, db, signer, make_order, cli
):
    await make_order("RP1")
    assert await post_gopay(client, signer, charge("RP1", pay_amount="50.000")) == (422, FAIL)
    note_id = await db.fetchval("SELECT id FROM notifications")
    replayed = cli("replay", "--id", str(note_id))
    assert replayed.returncode == 0, replayed.stderr
    assert "amount_mismatch" in replayed.stdout
    assert await reviews(db) == [("amount_mismatch", 5000, "CNY", True)]


async def test_the_migration_moves_the_old_review_note_into_reviews(migrated):
    """A database flagged and resolved orders the old way (orders.review_note, reviewed_at):
    006 keeps each as a review, open or resolved, and drops the old columns."""
    admin = await asyncpg.connect(migrated)
    name = "receiver_reviews_migration"
    await admin.execute(f"DROP DATABASE IF EXISTS {name}")
    await admin.execute(f"CREATE DATABASE {name}")
    conn = await asyncpg.connect(database="receiver_reviews_migration", dsn=migrated)
    try:
        await conn.execute(database.CREATE_MIGRATIONS_TABLE)
        for m in database.migrations():
            if m.version >= "006":
                break
            await conn.execute(m.sql)
            await conn.execute(database.INSERT_APPLIED, m.version, m.checksum)
        await conn.execute(
            "INSERT INTO orders (provider, merchant_id, out_trade_no, amount_minor, status,"
            " paid_amount_minor, needs_review, review_note, reviewed_at) VALUES"
            " ('gopay', 'm', 'FLAGGED', 10000, 'paid', 10000, true, NULL, NULL),"
            " ('gopay', 'm', 'RESOLVED', 10000, 'paid', 10000, false, 'refunded',"
            "  '2024-03-01 12:00+00'),"
            " ('gopay', 'm', 'PLAIN', 10000, 'paid', 10000, false, NULL, NULL)"
        )
        assert "006_reviews" in await database.migrate(conn)
        rows = await conn.fetch(
            "SELECT o.out_trade_no, r.reason, r.amount_minor, r.resolved_at IS NULL AS open,"
            " r.note, o.needs_review FROM reviews r JOIN orders o ON o.id = r.order_id ORDER BY 1"
        )
        assert [tuple(r) for r in rows] == [
            ("FLAGGED", "applied_late", 10000, True, None, True),
            ("RESOLVED", "applied_late", 10000, False, "refunded", False),
        ]
        columns = await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'orders'"
        )
        assert not {"review_note", "reviewed_at"} & {c["column_name"] for c in columns}
    finally:
        await conn.close()
        await admin.execute(f"DROP DATABASE {name}")
        await admin.close()
