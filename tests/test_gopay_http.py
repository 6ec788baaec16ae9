"""GoPay notifications through real HTTP against a real PostgreSQL: SPEC's outcome table."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from dataclasses import replace

import asyncpg
import pytest
import structlog

from receiver.http.app import create_app
from receiver.logging import add_request_id
from tests.conftest import GOPAY_MCHID
from tests.support.db import order_row, outcomes
from tests.support.gateways import FAIL, SUCCESS, charge, post
from tests.support.gopay_signer import GoPaySigner, new_rsa_key, php_json_encode


async def test_applied_moves_order_to_paid_and_records_everything(client, db, signer, make_order):
    order = await make_order("A1")
    body, headers = signer.notify(charge("A1"))
    resp = await client.post("/notify/gopay", data=body, headers=headers)
    assert (resp.status, await resp.read()) == (200, SUCCESS)
    assert resp.content_type == "application/json"
    row = await order_row(db, "A1")
    assert (row["status"], row["paid_amount_minor"], row["provider_trade_no"]) == (
        "paid",
        10000,
        "PA1",
    )
    assert row["paid_at"] is not None and not row["needs_review"]
    note = await db.fetchrow("SELECT * FROM notifications")
    assert note["body"] == body and note["outcome"] == "applied" and note["order_id"] == order["id"]
    assert json.loads(note["headers"])["x-ca-noncestr"] == headers["X-Ca-Noncestr"]
    assert "signature=base64" in note["detail"]
    events = await db.fetch("SELECT * FROM order_events")
    assert [
        (e["order_id"], e["from_status"], e["to_status"], e["notification_id"]) for e in events
    ] == [(order["id"], "pending", "paid", note["id"])]


async def test_applied_announces_event_with_notify(client, db, signer, make_order, migrated):
    await make_order("N1")
    listener = await asyncpg.connect(migrated)
    heard: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener("order_events", lambda *args: heard.put_nowait(args[3]))
    try:
        assert (await post(client, signer, charge("N1")))[0] == 200
        event_id = await asyncio.wait_for(heard.get(), 5)
    finally:
        await listener.close()
    assert int(event_id) == await db.fetchval("SELECT id FROM order_events")


async def test_duplicate_delivery_is_acknowledged_and_changes_nothing(
    client, db, signer, make_order
):
    await make_order("D1")
    assert await post(client, signer, charge("D1")) == (200, SUCCESS)
    before = await order_row(db, "D1")
    assert await post(client, signer, charge("D1")) == (200, SUCCESS)
    assert await order_row(db, "D1") == before
    assert await outcomes(db) == ["applied", "duplicate"]
    assert await db.fetchval("SELECT count(*) FROM order_events") == 1


async def test_failed_then_late_success_is_applied_late_with_review(client, db, signer, make_order):
    await make_order("L1")
    assert await post(client, signer, charge("L1", status=3, pay_amount="0.000")) == (200, SUCCESS)
    assert (await order_row(db, "L1"))["status"] == "failed"
    assert await post(client, signer, charge("L1")) == (200, SUCCESS)
    row = await order_row(db, "L1")
    assert (row["status"], row["needs_review"], row["paid_amount_minor"]) == ("paid", True, 10000)
    assert await outcomes(db) == ["applied", "applied_late"]
    transitions = await db.fetch("SELECT from_status, to_status FROM order_events ORDER BY id")
    assert [tuple(t) for t in transitions] == [("pending", "failed"), ("failed", "paid")]


async def test_closed_then_late_success_is_applied_late(client, db, signer, make_order):
    await make_order("L2")
    assert (await post(client, signer, charge("L2", status=0)))[0] == 200
    assert (await post(client, signer, charge("L2", status="2")))[0] == 200
    assert await outcomes(db) == ["applied", "applied_late"]
    assert (await order_row(db, "L2"))["needs_review"] is True


@pytest.mark.parametrize("backwards", [0, 3, "3"])
async def test_paid_order_never_moves_backwards(client, db, signer, make_order, backwards):
    await make_order("S1")
    assert (await post(client, signer, charge("S1")))[0] == 200
    assert await post(client, signer, charge("S1", status=backwards)) == (200, SUCCESS)
    assert (await order_row(db, "S1"))["status"] == "paid"
    assert await outcomes(db) == ["applied", "stale"]


async def test_waiting_status_is_noop(client, db, signer, make_order):
    await make_order("W1")
    assert await post(client, signer, charge("W1", status="1")) == (200, SUCCESS)
    assert (await order_row(db, "W1"))["status"] == "pending"
    assert await outcomes(db) == ["noop"]


async def test_absent_status_means_paid(client, db, signer, make_order):
    await make_order("P1")
    assert await post(client, signer, charge("P1", status=None)) == (200, SUCCESS)
    assert (await order_row(db, "P1"))["status"] == "paid"


async def test_php_escaped_charge_verifies_over_raw_bytes(client, db, signer, make_order):
    await make_order("E/1")
    ch = charge("E/1", subject="VIP充值 / 100", notify_url="https://a.example/x/y")
    body, headers = signer.notify(ch)
    assert b"\\/" in body and b"\\u5145" in body  # PHP json_encode escapes, kept verbatim
    resp = await client.post("/notify/gopay", data=body, headers=headers)
    assert (resp.status, await resp.read()) == (200, SUCCESS)
    assert (await order_row(db, "E/1"))["status"] == "paid"


async def test_legacy_plain_signature_verifies(client, db, signer, make_order):
    await make_order("G1")
    assert await post(client, signer, charge("G1"), base64_step=False) == (200, SUCCESS)
    assert "signature=plain" in await db.fetchval("SELECT detail FROM notifications")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "unparsable"),
        (b'{"result_code":"OK"}', "no charge"),
        (b'{"charge":[1,2]}', "charge not an object"),
    ],
)
async def test_malformed_body_is_400(client, db, signer, body, reason):
    _, headers = signer.notify(charge("M1"))
    resp = await client.post("/notify/gopay", data=body, headers=headers)
    assert (resp.status, await resp.read()) == (400, FAIL), reason
    assert await outcomes(db) == ["malformed"]


@pytest.mark.parametrize("amount", ["1.665", "abc", "-1.00", "1e3"])
async def test_bad_amount_is_malformed(client, db, signer, make_order, amount):
    await make_order("M2")
    assert await post(client, signer, charge("M2", amount=amount, pay_amount=amount)) == (400, FAIL)
    assert (await order_row(db, "M2"))["status"] == "pending"
    assert await outcomes(db) == ["malformed"]


async def test_forged_signature_is_401_and_recorded(client, db, make_order):
    await make_order("F1")
    forger = GoPaySigner(new_rsa_key())
    assert await post(client, forger, charge("F1")) == (401, FAIL)
    assert (await order_row(db, "F1"))["status"] == "pending"
    note = await db.fetchrow("SELECT outcome, out_trade_no, order_id FROM notifications")
    assert tuple(note) == ("bad_signature", "F1", None)


async def test_tampered_amount_is_bad_signature(client, db, signer, make_order):
    await make_order("F2")
    body, headers = signer.notify(charge("F2", amount="1.000", pay_amount="1.000"))
    forged = body.replace(b'"1.000"', b'"100.000"')
    resp = await client.post("/notify/gopay", data=forged, headers=headers)
    assert resp.status == 401
    assert (await order_row(db, "F2"))["status"] == "pending"


async def test_missing_signature_header_is_401(client, db, signer):
    body, headers = signer.notify(charge("F3"))
    del headers["X-Ca-Signature"]
    resp = await client.post("/notify/gopay", data=body, headers=headers)
    assert (resp.status, await resp.read()) == (401, FAIL)


async def test_unknown_merchant_is_403(client, db, signer, make_order):
    await make_order("U1")
    assert await post(client, signer, charge("U1", mid=999999)) == (403, FAIL)
    assert await outcomes(db) == ["unknown_merchant"]


async def test_unknown_order_is_404_and_retry_after_creation_applies(
    client, db, signer, make_order
):
    assert await post(client, signer, charge("O1")) == (404, FAIL)
    await make_order("O1")
    assert await post(client, signer, charge("O1")) == (200, SUCCESS)
    assert await outcomes(db) == ["unknown_order", "applied"]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"amount": "99.000", "pay_amount": "99.000"}, "amount_mismatch"),
        ({"pay_amount": "99.990"}, "amount_mismatch"),
        ({"currency": "INR"}, "currency_mismatch"),
    ],
)
async def test_mismatch_is_422_and_order_untouched(
    client, db, signer, make_order, fields, expected
):
    order = await make_order("X1")
    assert await post(client, signer, charge("X1", **fields)) == (422, FAIL)
    # The order keeps its status and money; a person is asked to look (one review).
    assert dict(await order_row(db, "X1")) == dict(order) | {"needs_review": True}
    assert await db.fetchval("SELECT array_agg(reason) FROM reviews") == [expected]
    assert await outcomes(db) == [expected]
    assert await db.fetchval("SELECT count(*) FROM order_events") == 0


async def test_replayed_nonce_is_401_and_fresh_retry_is_duplicate(client, db, signer, make_order):
    await make_order("R1")
    body, headers = signer.notify(charge("R1"))
    first = await client.post("/notify/gopay", data=body, headers=headers)
    again = await client.post("/notify/gopay", data=body, headers=headers)
    assert (first.status, again.status, await again.read()) == (200, 401, FAIL)
    assert await post(client, signer, charge("R1")) == (200, SUCCESS)
    assert await outcomes(db) == ["applied", "replayed", "duplicate"]


@pytest.mark.parametrize("skew_s", [-1000, 1000])
async def test_stale_or_future_timestamp_is_expired(client, db, signer, make_order, skew_s):
    await make_order("T1")
    stamp = str(int((time.time() + skew_s) * 1000))
    assert await post(client, signer, charge("T1"), timestamp=stamp) == (401, FAIL)
    assert await outcomes(db) == ["expired"]


async def test_wrong_method_is_405_with_fail_body(client, db):
    resp = await client.get("/notify/gopay")
    assert (resp.status, await resp.read()) == (405, FAIL)
    assert resp.headers["Allow"] == "POST"


async def test_wrong_content_type_is_415(client, db, signer):
    body, headers = signer.notify(charge("C1"))
    headers["Content-Type"] = "text/plain"
    resp = await client.post("/notify/gopay", data=body, headers=headers)
    assert (resp.status, await resp.read()) == (415, FAIL)


async def test_oversized_body_is_413(client, db, signer, config):
    _, headers = signer.notify(charge("B1"))
    big = b"{" + b" " * (config.server.max_body_bytes + 1) + b"}"
    resp = await client.post("/notify/gopay", data=big, headers=headers)
    assert (resp.status, await resp.read()) == (413, FAIL)


async def test_unknown_gateway_is_404(client, db):
    assert (await client.post("/notify/paypal", data=b"{}")).status == 404


async def test_fifty_concurrent_deliveries_apply_once(client, db, signer, make_order):
    await make_order("C50")
    deliveries = [signer.notify(charge("C50")) for _ in range(50)]
    replies = await asyncio.gather(
        *(client.post("/notify/gopay", data=b, headers=h) for b, h in deliveries)
    )
    assert [(r.status, await r.read()) for r in replies] == [(200, SUCCESS)] * 50
    assert await db.fetchval("SELECT count(*) FROM order_events") == 1
    assert sorted(await outcomes(db)) == ["applied"] + ["duplicate"] * 49


async def test_one_log_line_per_notification_without_secrets(client, db, signer, make_order):
    await make_order("LG1")
    body, headers = signer.notify(charge("LG1"))
    with structlog.testing.capture_logs(processors=[add_request_id]) as logs:
        resp = await client.post("/notify/gopay", data=body, headers=headers)
    lines = [e for e in logs if e["event"] == "notification"]
    assert len(lines) == 1
    line = lines[0]
    assert {k: line[k] for k in ("provider", "merchant_id", "out_trade_no", "outcome")} == {
        "provider": "gopay",
        "merchant_id": GOPAY_MCHID,
        "out_trade_no": "LG1",
        "outcome": "applied",
    }
    assert (line["from_status"], line["to_status"]) == ("pending", "paid")
    assert line["duration_ms"] >= 0
    assert line["request_id"] == resp.headers["X-Request-Id"]
    assert headers["X-Ca-Signature"] not in repr(logs)


async def test_healthz_and_readyz(client, db):
    assert (await client.get("/healthz")).status == 200
    resp = await client.get("/readyz")
    assert resp.status == 200 and (await resp.json())["status"] == "ready"


async def test_database_outage_gives_503_and_heals(db, signer, make_order, proxied):
    await make_order("DB1")
    client, proxy = proxied
    await proxy.cut()
    assert await post(client, signer, charge("DB1")) == (503, FAIL)
    assert (await client.get("/readyz")).status == 503
    assert await db.fetchval("SELECT count(*) FROM notifications") == 0
    await proxy.restore()
    assert await post(client, signer, charge("DB1")) == (200, SUCCESS)
    assert (await client.get("/readyz")).status == 200
    assert (await order_row(db, "DB1"))["status"] == "paid"


async def test_unstorable_order_number_is_malformed_not_503(client, db, signer):
    assert await post(client, signer, charge("A\u0000B")) == (400, FAIL)
    assert await outcomes(db) == ["malformed"]


# --- issue 9: PHP timestamps, protocol fields, payouts, nonces, stored headers ------------------

SIGNATURE_HEADERS = ("x-ca-noncestr", "x-ca-timestamp", "x-ca-signature")


async def stored(db: asyncpg.Connection) -> asyncpg.Record:
    return await db.fetchrow("SELECT * FROM notifications ORDER BY id DESC LIMIT 1")


def expected_headers(headers: dict[str, str]) -> dict[str, str]:
    """What a stored row keeps of the request: content type and signature headers, verbatim."""
    lowered = {k.lower(): v for k, v in headers.items()}
    return {name: lowered[name] for name in ("content-type", *SIGNATURE_HEADERS)}


@pytest.mark.parametrize("spelling", ["{:.1f}", "{:.11E}", "{:.11e}"])
async def test_php_float_timestamp_text_is_applied_and_kept_verbatim(
    client, db, signer, make_order, spelling
):
    await make_order("PHP1")
    stamp = spelling.format(time.time() * 1000)  # 1795591510237.1, 1.79559151024E+12
    body, headers = signer.notify(charge("PHP1"), timestamp=stamp)
    resp = await client.post("/notify/gopay", data=body, headers=headers)
    assert (resp.status, await resp.read()) == (200, SUCCESS)
    assert (await order_row(db, "PHP1"))["status"] == "paid"
    note = await stored(db)
    assert note["outcome"] == "applied"
    assert json.loads(note["headers"]) == expected_headers(headers)
    assert json.loads(note["headers"])["x-ca-timestamp"] == stamp


async def test_result_code_not_ok_is_malformed_stored_and_order_untouched(
    client, db, signer, make_order
):
    order = await make_order("RC1")
    ch = charge("RC1")
    body = php_json_encode({"result_code": "FAIL", "result_msg": "FAIL", "charge": ch})
    headers = signer.headers(php_json_encode(ch))
    resp = await client.post("/notify/gopay", data=body, headers=headers)
    assert (resp.status, await resp.read()) == (400, FAIL)
    assert await order_row(db, "RC1") == order
    note = await stored(db)
    assert (note["outcome"], note["merchant_id"], note["out_trade_no"], note["body"]) == (
        "malformed",
        GOPAY_MCHID,
        "RC1",
        body,
    )
    assert note["detail"] == "result_code is not OK"
    assert json.loads(note["headers"]) == expected_headers(headers)


async def test_payout_is_channel_mismatch_422_stored_with_its_order(client, db, signer, make_order):
    order = await make_order("PO1")
    body, headers = signer.notify(charge("PO1", channel="gopay_payout"))
    resp = await client.post("/notify/gopay", data=body, headers=headers)
    assert (resp.status, await resp.read()) == (422, FAIL)
    assert await order_row(db, "PO1") == order
    assert await db.fetchval("SELECT count(*) FROM order_events") == 0
    note = await stored(db)
    assert (note["outcome"], note["order_id"], note["merchant_id"], note["out_trade_no"]) == (
        "channel_mismatch",
        order["id"],
        GOPAY_MCHID,
        "PO1",
    )
    assert json.loads(note["headers"]) == expected_headers(headers)


async def test_payout_for_an_unknown_order_is_channel_mismatch_without_order(client, db, signer):
    assert await post(client, signer, charge("PO2", channel="gopay_payout")) == (422, FAIL)
    note = await stored(db)
    assert (note["outcome"], note["order_id"], note["out_trade_no"]) == (
        "channel_mismatch",
        None,
        "PO2",
    )


async def test_signed_nonce_of_thousands_of_characters_is_malformed_not_503(
    client, db, signer, make_order
):
    order = await make_order("NC1")
    nonce = "N" * 5000
    body, headers = signer.notify(charge("NC1"), nonce=nonce)
    resp = await client.post("/notify/gopay", data=body, headers=headers)
    assert (resp.status, await resp.read()) == (400, FAIL)
    assert await order_row(db, "NC1") == order
    note = await stored(db)
    assert (note["outcome"], note["out_trade_no"]) == ("malformed", "NC1")
    assert json.loads(note["headers"])["x-ca-noncestr"] == nonce
    assert await db.fetchval("SELECT count(*) FROM gopay_nonces") == 0


async def test_empty_nonce_is_refused_and_stored(client, db, signer, make_order):
    order = await make_order("NC2")
    assert await post(client, signer, charge("NC2"), nonce="") == (401, FAIL)
    assert await order_row(db, "NC2") == order
    assert await outcomes(db) == ["bad_signature"]


@pytest.mark.parametrize("refusal", ["bad_signature", "expired", "malformed", "unknown_merchant"])
async def test_refused_rows_keep_the_signature_headers_and_content_type(
    client, db, signer, make_order, refusal
):
    await make_order("H1")
    ch = charge("H1", mid=999999 if refusal == "unknown_merchant" else int(GOPAY_MCHID))
    stamp = str(int((time.time() - 3600) * 1000)) if refusal == "expired" else None
    body, headers = signer.notify(ch, timestamp=stamp)
    if refusal == "bad_signature":
        headers["X-Ca-Signature"] = GoPaySigner(new_rsa_key()).notify(ch)[1]["X-Ca-Signature"]
    if refusal == "malformed":
        body = body.replace(b'"result_code":"OK"', b'"result_code":"NO"')
    resp = await client.post("/notify/gopay", data=body, headers=headers)
    assert resp.status in (400, 401, 403)
    note = await stored(db)
    assert note["outcome"] == refusal
    assert json.loads(note["headers"]) == expected_headers(headers)


async def test_refused_row_keeps_only_the_headers_that_came(client, db, signer):
    body, headers = signer.notify(charge("H2"))
    del headers["X-Ca-Signature"]
    headers["Content-Type"] = "application/json"
    assert (await client.post("/notify/gopay", data=body, headers=headers)).status == 401
    assert json.loads((await stored(db))["headers"]) == {
        "content-type": "application/json",
        "x-ca-noncestr": headers["X-Ca-Noncestr"],
        "x-ca-timestamp": headers["X-Ca-Timestamp"],
    }


async def test_wrong_content_type_row_keeps_that_content_type(client, db, signer):
    body, headers = signer.notify(charge("H3"))
    headers["Content-Type"] = "text/plain; charset=latin-1"
    assert (await client.post("/notify/gopay", data=body, headers=headers)).status == 415
    note = await stored(db)
    assert note["outcome"] == "malformed"
    assert json.loads(note["headers"]) == expected_headers(headers)


async def test_ip_denied_row_keeps_the_signature_headers(
    db, config, signer, make_order, aiohttp_client
):
    only = (ipaddress.ip_network("203.0.113.0/24"),)
    app = create_app(replace(config, gopay=replace(config.gopay, allowed_ips=only)))
    client = await aiohttp_client(app)
    body, headers = signer.notify(charge("H4"))
    assert (await client.post("/notify/gopay", data=body, headers=headers)).status == 403
    note = await stored(db)
    assert note["outcome"] == "ip_denied"
    assert json.loads(note["headers"]) == expected_headers(headers)
