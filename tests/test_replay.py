"""Replay of stored notifications: verified again over the stored bytes, the same ledger."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import asyncpg
import pytest

from receiver.config import Config
from receiver.http.app import build_gateways
from receiver.sources.replay import (
    NoSuchNotification,
    Replayed,
    Selection,
    replay,
    select,
    stored_inbound,
)
from receiver.store.database import create_pool
from receiver.store.ledger import Ledger
from receiver.store.ops import parse_duration
from tests.support.baofoo_signer import baofoo_fields, encode_form, sign_baofoo
from tests.support.gateways import charge, post
from tests.support.gopay_signer import GoPaySigner, new_rsa_key


@pytest.fixture
async def pool(db, migrated) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(migrated, min_size=1, max_size=4)
    yield p
    await p.close()


async def replay_all(
    pool: asyncpg.Pool, config: Config, selection: Selection, *, dry_run: bool = False
) -> list[Replayed]:
    gateways, ledger = build_gateways(config), Ledger(pool)
    return [
        await replay(r, gateways=gateways, ledger=ledger, dry_run=dry_run)
        async for rows in select(pool, selection, batch=2)
        for r in rows
    ]


async def events(db: asyncpg.Connection) -> list[tuple[Any, ...]]:
    rows = await db.fetch("SELECT from_status, to_status, notification_id FROM order_events")
    return [tuple(r) for r in rows]


UNKNOWN = Selection(outcome="unknown_order")


async def test_unknown_order_replayed_after_the_order_exists_is_applied_once(
    client, db, pool, config, signer, make_order
):
    assert (await post(client, signer, charge("U1")))[0] == 404
    original = await db.fetchval("SELECT id FROM notifications")
    order = await make_order("U1")
    [first] = await replay_all(pool, config, UNKNOWN)
    assert (first.replay_of, first.was, first.outcome) == (original, "unknown_order", "applied")
    row = await db.fetchrow("SELECT * FROM notifications WHERE id = $1", first.notification_id)
    assert (row["source"], row["replay_of"], row["order_id"]) == ("replay", original, order["id"])
    assert await events(db) == [("pending", "paid", first.notification_id)]
    [second] = await replay_all(pool, config, UNKNOWN)  # the original again, not the replay
    assert (second.replay_of, second.outcome) == (original, "duplicate")
    assert await events(db) == [("pending", "paid", first.notification_id)]
    sources = await db.fetch("SELECT source, outcome FROM notifications ORDER BY id")
    assert [tuple(s) for s in sources] == [
        ("notify", "unknown_order"),
        ("replay", "applied"),
        ("replay", "duplicate"),
    ]


async def test_replay_skips_only_freshness_and_nonce(client, db, pool, config, signer, make_order):
    ten_minutes_ago = str(int((time.time() - 600) * 1000))
    assert (await post(client, signer, charge("U2"), timestamp=ten_minutes_ago))[0] == 404
    assert await db.fetchval("SELECT count(*) FROM gopay_nonces") == 1  # its nonce is used
    await make_order("U2")
    strict = replace(config, gopay=replace(config.gopay, timestamp_tolerance_s=60))
    [done] = await replay_all(pool, strict, UNKNOWN)
    assert done.outcome == "applied"


async def test_a_forgery_replayed_is_still_bad_signature(client, db, pool, config, make_order):
    await make_order("F1")
    forger = GoPaySigner(new_rsa_key())
    assert (await post(client, forger, charge("F1")))[0] == 401
    forged = await db.fetchval("SELECT id FROM notifications")
    [done] = await replay_all(pool, config, Selection(ids=[forged]))
    assert (done.outcome, done.replay_of) == ("bad_signature", forged)
    assert await db.fetchval("SELECT status FROM orders") == "pending"
    assert await db.fetchval(
        "SELECT source FROM notifications WHERE id = $1", done.notification_id
    ) == ("replay")


async def test_stored_bytes_changed_after_receipt_no_longer_verify(
    client, db, pool, config, signer, make_order
):
    assert (await post(client, signer, charge("F2")))[0] == 404
    await make_order("F2", amount_minor=100)
    await db.execute(
        "UPDATE notifications"
        " SET body = convert_to(replace(convert_from(body, 'UTF8'), '100.000', '1.000'), 'UTF8')"
    )
    [done] = await replay_all(pool, config, UNKNOWN)
    assert (done.outcome, "does not verify" in done.reason) == ("bad_signature", True)
    assert await db.fetchval("SELECT status FROM orders") == "pending"


async def test_baofoo_unknown_order_replayed_after_creation(
    client, db, pool, config, make_order, baofoo_md5_key
):
    body = encode_form(sign_baofoo(baofoo_fields(TransID="BU1"), baofoo_md5_key))
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    resp = await client.post("/notify/baofoo", data=body, headers=headers)
    assert resp.status == 404
    await make_order("BU1", provider="baofoo", amount_minor=100)
    [done] = await replay_all(pool, config, Selection(outcome="unknown_order", provider="baofoo"))
    assert (done.provider, done.outcome, done.to_status) == ("baofoo", "applied", "paid")


async def test_dry_run_says_what_would_happen_and_stores_nothing(
    client, db, pool, config, signer, make_order
):
    assert (await post(client, signer, charge("U3")))[0] == 404
    await make_order("U3")
    [done] = await replay_all(pool, config, UNKNOWN, dry_run=True)
    assert (done.outcome, done.to_status, done.dry_run) == ("applied", "paid", True)
    assert done.notification_id is None
    assert await db.fetchval("SELECT count(*) FROM notifications") == 1
    assert await db.fetchval("SELECT status FROM orders") == "pending"


async def test_selection_by_provider_and_age(client, db, pool, config, signer):
    assert (await post(client, signer, charge("U4")))[0] == 404
    await db.execute("UPDATE notifications SET received_at = now() - interval '2 days'")
    recent = Selection(outcome="unknown_order", since=parse_duration("1d"))
    assert await replay_all(pool, config, recent) == []
    other = Selection(outcome="unknown_order", provider="baofoo")
    assert await replay_all(pool, config, other) == []


async def test_unknown_id_is_refused_before_anything_is_replayed(db, pool, config):
    with pytest.raises(NoSuchNotification, match="id 42"):
        await replay_all(pool, config, Selection(ids=[42]))


async def test_an_order_query_reply_is_not_replayed(db, pool, config, make_order):
    await db.execute(
        "INSERT INTO notifications (provider, body, outcome, source)"
        " VALUES ('baofoo', 'x', 'applied', 'query')"
    )
    [done] = await replay_all(pool, config, Selection(ids=[1]))
    assert (done.outcome, done.reason) == (None, "not replayable: an order-query reply")


@pytest.mark.parametrize(
    ("provider", "headers", "content_type", "charset"),
    [
        ("gopay", "{}", "application/json", None),
        ("baofoo", "{}", "application/x-www-form-urlencoded", None),
        (
            "baofoo",
            '{"content-type": "application/x-www-form-urlencoded; charset=GBK"}',
            "application/x-www-form-urlencoded",
            "GBK",
        ),
        ("gopay", '{"Content-Type": "text/plain"}', "text/plain", None),
    ],
)
def test_stored_inbound_takes_the_stored_content_type_else_the_gateways_usual(
    provider, headers, content_type, charset
):
    row = {"provider": provider, "headers": headers, "body": b"x", "remote_addr": "10.0.0.1"}
    inbound = stored_inbound(row)
    assert (inbound.content_type, inbound.charset) == (content_type, charset)
    assert (inbound.body, inbound.remote_addr, inbound.provider) == (b"x", "10.0.0.1", provider)


async def test_replay_checks_the_stored_source_address_against_todays_allow_list(
    client, db, pool, config, signer, make_order
):
    assert (await post(client, signer, charge("IP1")))[0] == 404
    await make_order("IP1")
    allowed = (ipaddress.ip_network("192.0.2.0/24"),)
    strict = replace(config, gopay=replace(config.gopay, allowed_ips=allowed))
    [done] = await replay_all(pool, strict, UNKNOWN)
    assert done.outcome == "ip_denied"
    assert await db.fetchval("SELECT status FROM orders") == "pending"
