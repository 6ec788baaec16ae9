"""The flood guard: past `server.unverified_per_minute` refusals before a verified signature from
one address, 429 with the FAIL body and nothing stored; verified notifications never limited."""

from __future__ import annotations

from dataclasses import replace

import structlog

from receiver.http import unverified
from receiver.http.unverified import UnverifiedLimiter, source_of
from tests.support.db import order_row, outcomes
from tests.support.gateways import FAIL, SUCCESS, charge

LIMIT = 3


async def test_past_the_limit_forgeries_get_429_and_are_not_stored_but_signed_ones_pass(
    db, config, serve_app, signer, make_order
):
    await make_order("UV1")
    client = await serve_app(
        replace(config, server=replace(config.server, unverified_per_minute=LIMIT))
    )
    body, headers = signer.notify(charge("UV1"))
    forged = headers | {"X-Ca-Signature": "Zm9yZ2Vk"}
    replies = []
    with structlog.testing.capture_logs() as logs:
        for _ in range(LIMIT + 4):
            resp = await client.post("/notify/gopay", data=body, headers=forged)
            replies.append((resp.status, await resp.read()))
        resp = await client.post("/notify/gopay", data=body, headers=headers)
        signed = (resp.status, await resp.read())
    assert replies == [(401, FAIL)] * LIMIT + [(429, FAIL)] * 4
    assert signed == (200, SUCCESS)
    assert await outcomes(db) == ["bad_signature"] * LIMIT + ["applied"]
    assert (await order_row(db, "UV1"))["status"] == "paid"
    floods = [entry for entry in logs if entry["event"] == "unverified_flood"]
    assert [(e["remote_addr"], e["limit"]) for e in floods] == [("127.0.0.1", LIMIT)]
    assert len([e for e in logs if e["event"] == "notification"]) == LIMIT + 1


async def test_malformed_bodies_count_too_and_baofoo_gets_its_own_fail(db, config, serve_app):
    client = await serve_app(
        replace(config, server=replace(config.server, unverified_per_minute=1))
    )
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    first = await client.post("/notify/baofoo", data=b"junk", headers=form)
    second = await client.post("/notify/baofoo", data=b"junk", headers=form)
    assert (first.status, await first.read()) == (400, b"FAIL")
    assert (second.status, await second.read()) == (429, b"FAIL")
    assert await outcomes(db) == ["malformed"]


def test_a_new_minute_starts_a_new_count_and_forgets_old_addresses():
    now = [0.0]
    limiter = UnverifiedLimiter(2, clock=lambda: now[0])
    assert [limiter.admit("203.0.113.1") for _ in range(3)] == [True, True, False]
    now[0] = 61.0
    assert limiter.admit("203.0.113.1")
    assert len(limiter._counts) == 1


def test_tracked_addresses_are_bounded(monkeypatch):
    monkeypatch.setattr(unverified, "MAX_TRACKED", 4)
    limiter = UnverifiedLimiter(2, clock=lambda: 0.0)
    for i in range(100):
        limiter.admit(f"198.51.100.{i}")
    assert len(limiter._counts) <= 5  # four addresses and the shared rest


def test_an_ipv6_client_counts_as_its_slash_64():
    assert source_of("2001:db8:1:2:aaaa::1") == source_of("2001:db8:1:2:bbbb::2")
    assert source_of("2001:db8:1:2::1") != source_of("2001:db8:1:3::1")
    assert source_of("::ffff:203.0.113.5") == "203.0.113.5"
    assert source_of(None) == "unknown"
