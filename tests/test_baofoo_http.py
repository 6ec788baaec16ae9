"""Baofoo notifications through real HTTP against a real PostgreSQL: SPEC's outcome table."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from receiver.http.app import create_app
from tests.support.baofoo_signer import baofoo_fields, encode_form, sign_baofoo
from tests.support.gateways import post_form as post

FORM = "application/x-www-form-urlencoded"


@pytest.fixture
def sign(baofoo_md5_key):
    def signed(trans_id: str, **overrides: str) -> dict[str, str]:
        return sign_baofoo(baofoo_fields(TransID=trans_id, **overrides), baofoo_md5_key)

    return signed


async def order_row(db: asyncpg.Connection, trans_id: str) -> asyncpg.Record:
    return await db.fetchrow(
        "SELECT * FROM orders WHERE provider = 'baofoo' AND out_trade_no = $1", trans_id
    )


async def outcomes(db: asyncpg.Connection) -> list[str]:
    return [r["outcome"] for r in await db.fetch("SELECT outcome FROM notifications ORDER BY id")]


async def baofoo_order(make_order, trans_id: str, **kw: Any) -> asyncpg.Record:
    return await make_order(trans_id, provider="baofoo", amount_minor=100, **kw)


async def test_applied_replies_plain_ok_and_sets_paid_at(client, db, make_order, sign):
    await baofoo_order(make_order, "B1")
    fields = sign("B1", SuccTime="20240301120130")
    resp = await client.post(
        "/notify/baofoo", data=encode_form(fields), headers={"Content-Type": FORM}
    )
    assert (resp.status, await resp.read(), resp.content_type) == (200, b"OK", "text/plain")
    row = await order_row(db, "B1")
    assert (row["status"], row["paid_amount_minor"]) == ("paid", 100)
    assert row["paid_at"] == datetime(2024, 3, 1, 4, 1, 30, tzinfo=UTC)  # China time is UTC+8
    assert await outcomes(db) == ["applied"]
    assert await db.fetchval("SELECT count(*) FROM order_events") == 1


async def test_duplicate_and_concurrent_deliveries_apply_once(client, db, make_order, sign):
    await baofoo_order(make_order, "B2")
    replies = await asyncio.gather(*(post(client, sign("B2")) for _ in range(20)))
    assert replies == [(200, b"OK")] * 20
    assert await post(client, sign("B2")) == (200, b"OK")
    assert await db.fetchval("SELECT count(*) FROM order_events") == 1
    assert sorted(await outcomes(db)) == ["applied"] + ["duplicate"] * 20


async def test_failure_then_late_success(client, db, make_order, sign):
    await baofoo_order(make_order, "B3")
    assert await post(client, sign("B3", Result="0", ResultDesc="0013")) == (200, b"OK")
    assert (await order_row(db, "B3"))["status"] == "failed"
    assert "ResultDesc=0013" in await db.fetchval("SELECT detail FROM notifications")
    assert await post(client, sign("B3")) == (200, b"OK")
    row = await order_row(db, "B3")
    assert (row["status"], row["needs_review"]) == ("paid", True)
    assert await outcomes(db) == ["applied", "applied_late"]


async def test_failure_after_paid_is_stale(client, db, make_order, sign):
    await baofoo_order(make_order, "B4")
    await post(client, sign("B4"))
    assert await post(client, sign("B4", Result="0", ResultDesc="0000")) == (200, b"OK")
    assert (await order_row(db, "B4"))["status"] == "paid"
    assert await outcomes(db) == ["applied", "stale"]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"Result": "2", "ResultDesc": "01"}, "unknown result"),
        ({"FactMoney": "1.00"}, "fen are integers"),
    ],
)
async def test_malformed_is_400_fail(client, db, make_order, sign, fields, reason):
    await baofoo_order(make_order, "B5")
    assert await post(client, sign("B5", **fields)) == (400, b"FAIL"), reason
    assert await outcomes(db) == ["malformed"]


async def test_missing_or_repeated_field_is_malformed(client, db, sign):
    fields = sign("B6")
    del fields["TransID"]
    assert await post(client, fields) == (400, b"FAIL")
    body = encode_form(sign("B6")) + b"&FactMoney=100"
    resp = await client.post("/notify/baofoo", data=body, headers={"Content-Type": FORM})
    assert (resp.status, await resp.read()) == (400, b"FAIL")
    assert await outcomes(db) == ["malformed", "malformed"]


async def test_bad_signature_is_401(client, db, make_order, sign):
    await baofoo_order(make_order, "B7")
    forged = sign_baofoo(baofoo_fields(TransID="B7"), "not-the-key")
    assert await post(client, forged) == (401, b"FAIL")
    tampered = {**sign("B7"), "FactMoney": "99"}
    assert await post(client, tampered) == (401, b"FAIL")
    assert (await order_row(db, "B7"))["status"] == "pending"


async def test_upper_case_signature_is_accepted(client, db, make_order, sign):
    await baofoo_order(make_order, "B8")
    fields = sign("B8")
    fields["Md5Sign"] = fields["Md5Sign"].upper()
    assert await post(client, fields) == (200, b"OK")


async def test_unknown_merchant_pair_is_403(client, db, baofoo_md5_key):
    fields = sign_baofoo(baofoo_fields(TransID="B9", TerminalID="99999999"), baofoo_md5_key)
    assert await post(client, fields) == (403, b"FAIL")
    assert await outcomes(db) == ["unknown_merchant"]


async def test_unknown_order_is_404(client, db, sign):
    assert await post(client, sign("NOPE")) == (404, b"FAIL")


async def test_bank_order_amount_must_match(client, db, make_order, sign):
    await baofoo_order(make_order, "B10", channel="1001")
    assert await post(client, sign("B10", FactMoney="99")) == (422, b"FAIL")
    assert await post(client, sign("B10", FactMoney="101")) == (422, b"FAIL")
    assert (await order_row(db, "B10"))["status"] == "pending"
    assert await outcomes(db) == ["amount_mismatch", "amount_mismatch"]


async def test_card_order_underpayment_accepted_and_recorded(client, db, make_order, sign):
    await baofoo_order(make_order, "B11", channel="103")
    assert await post(client, sign("B11", FactMoney="80")) == (200, b"OK")
    row = await order_row(db, "B11")
    assert (row["status"], row["amount_minor"], row["paid_amount_minor"]) == ("paid", 100, 80)


async def test_card_order_overpayment_refused(client, db, make_order, sign):
    await baofoo_order(make_order, "B12", channel="116")
    assert await post(client, sign("B12", FactMoney="101")) == (422, b"FAIL")
    assert (await order_row(db, "B12"))["status"] == "pending"


async def test_currency_of_order_must_be_cny(client, db, make_order, sign):
    await baofoo_order(make_order, "B13", currency="INR")
    assert await post(client, sign("B13")) == (422, b"FAIL")
    assert await outcomes(db) == ["currency_mismatch"]


async def test_gbk_post_with_chinese_additional_info_verifies(
    client, db, make_order, baofoo_md5_key
):
    await baofoo_order(make_order, "B14")
    fields = sign_baofoo(
        baofoo_fields(TransID="B14", AdditionalInfo="会员充值 一百元"),
        baofoo_md5_key,
        encoding="gbk",
    )
    assert await post(client, fields, charset="GBK") == (200, b"OK")
    body = await db.fetchval("SELECT body FROM notifications")
    assert "会员充值".encode("gbk") not in body  # percent-encoded, kept raw as received
    assert (await order_row(db, "B14"))["status"] == "paid"


async def test_additional_info_with_form_delimiters_round_trips(client, db, make_order, sign):
    await baofoo_order(make_order, "B15")
    assert await post(client, sign("B15", AdditionalInfo="a&b=c+d/e f")) == (200, b"OK")


async def test_wrong_content_type_is_415(client, db, sign):
    resp = await client.post(
        "/notify/baofoo",
        data=encode_form(sign("B16")),
        headers={"Content-Type": "application/json"},
    )
    assert (resp.status, await resp.read()) == (415, b"FAIL")


async def test_wrong_method_is_405(client, db):
    resp = await client.get("/notify/baofoo")
    assert (resp.status, await resp.read()) == (405, b"FAIL")


@pytest.mark.parametrize("case", ["malformed", "bad_signature", "unknown_order", "mismatch", "405"])
async def test_refusals_never_start_with_ok(client, db, make_order, sign, case):
    await baofoo_order(make_order, "B17")
    fields = {
        "malformed": {**sign("B17"), "Result": "x"},
        "bad_signature": {**sign("B17"), "Md5Sign": "0" * 32},
        "unknown_order": sign("B18"),
        "mismatch": sign("B17", FactMoney="5"),
    }.get(case)
    if fields is None:
        status, body = (await client.get("/notify/baofoo")).status, b"FAIL"
    else:
        status, body = await post(client, fields)
    assert status != 200
    assert b"OK" not in body.lstrip()[:5]


async def test_database_unavailable_is_503_fail(db, make_order, sign, proxied):
    await baofoo_order(make_order, "B19")
    client, proxy = proxied
    await proxy.cut()
    assert await post(client, sign("B19")) == (503, b"FAIL")
    await proxy.restore()
    assert await post(client, sign("B19")) == (200, b"OK")


class TestSourceAllowlist:
    async def test_address_outside_allowlist_is_ip_denied(
        self, db, config, make_order, sign, aiohttp_client
    ):
        await baofoo_order(make_order, "B20")
        only = (ipaddress.ip_network("203.0.113.0/24"),)
        app = create_app(replace(config, baofoo=replace(config.baofoo, allowed_ips=only)))
        client = await aiohttp_client(app)
        assert await post(client, sign("B20")) == (403, b"FAIL")
        assert await outcomes(db) == ["ip_denied"]

    async def test_forwarded_for_believed_only_from_trusted_proxy(
        self, db, config, make_order, sign, aiohttp_client
    ):
        await baofoo_order(make_order, "B21")
        only = (ipaddress.ip_network("203.0.113.0/24"),)
        base = replace(config, baofoo=replace(config.baofoo, allowed_ips=only))
        untrusting = await aiohttp_client(create_app(base))
        spoofed = await post(untrusting, sign("B21"), **{"X-Forwarded-For": "203.0.113.9"})
        assert spoofed == (403, b"FAIL")
        loopback = (ipaddress.ip_network("127.0.0.0/8"),)
        trusting_cfg = replace(base, server=replace(base.server, trusted_proxies=loopback))
        trusting = await aiohttp_client(create_app(trusting_cfg))
        forwarded = await post(trusting, sign("B21"), **{"X-Forwarded-For": "203.0.113.9"})
        assert forwarded == (200, b"OK")
        remote = await db.fetchval("SELECT remote_addr FROM notifications ORDER BY id DESC LIMIT 1")
        assert remote == "203.0.113.9"
        assert await outcomes(db) == ["ip_denied", "applied"]


async def test_unstorable_trans_id_is_malformed_not_503(client, db, sign):
    assert await post(client, sign("B\u0000")) == (400, b"FAIL")
    assert await outcomes(db) == ["malformed"]


@pytest.mark.parametrize("absent", [("SuccTime",), ("SuccTime", "FactMoney")])
async def test_failure_without_succ_time_is_applied_as_failed(
    client, db, make_order, baofoo_md5_key, absent
):
    order = await baofoo_order(make_order, "B22")
    fields = baofoo_fields(TransID="B22", Result="0", ResultDesc="0002")
    for name in absent:
        del fields[name]  # absent fields sign as the empty string
    assert await post(client, sign_baofoo(fields, baofoo_md5_key)) == (200, b"OK")
    row = await order_row(db, "B22")
    assert (row["status"], row["paid_at"], row["paid_amount_minor"]) == ("failed", None, None)
    note = await db.fetchrow("SELECT outcome, order_id, detail FROM notifications")
    assert (note["outcome"], note["order_id"]) == ("applied", order["id"])
    assert "ResultDesc=0002" in note["detail"]


async def test_payment_without_succ_time_is_still_malformed(client, db, make_order, baofoo_md5_key):
    order = await baofoo_order(make_order, "B23")
    fields = baofoo_fields(TransID="B23")
    del fields["SuccTime"]
    assert await post(client, sign_baofoo(fields, baofoo_md5_key)) == (400, b"FAIL")
    assert await order_row(db, "B23") == order
    assert await outcomes(db) == ["malformed"]


async def stored_headers(db: asyncpg.Connection) -> list[dict[str, str]]:
    rows = await db.fetch("SELECT headers FROM notifications ORDER BY id")
    return [json.loads(r["headers"]) for r in rows]


async def test_every_stored_row_keeps_the_content_type_with_its_charset(
    client, db, make_order, sign, baofoo_md5_key
):
    await baofoo_order(make_order, "B24")
    gbk = sign_baofoo(
        baofoo_fields(TransID="B24", AdditionalInfo="充值"), baofoo_md5_key, encoding="gbk"
    )
    assert await post(client, gbk, charset="GBK") == (200, b"OK")
    forged = {**sign("B24"), "Md5Sign": "0" * 32}
    assert await post(client, forged) == (401, b"FAIL")
    resp = await client.post(
        "/notify/baofoo", data=b"x", headers={"Content-Type": "text/plain; charset=big5"}
    )
    assert resp.status == 415
    assert await outcomes(db) == ["applied", "bad_signature", "malformed"]
    assert await stored_headers(db) == [
        {"content-type": f"{FORM}; charset=GBK"},
        {"content-type": FORM},
        {"content-type": "text/plain; charset=big5"},
    ]
