"""Forwarding order events to `[[forward]]` destinations: signed, retried, in order, never lost.

The receiver runs as `receiver serve` runs it (its app, its forwarder); the destination is a
real HTTP server on a socket (tests/downstream.py).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import asyncpg
import pytest
import standardwebhooks
import structlog
from aiohttp import web
from prometheus_client import REGISTRY

from receiver.config import Config, ForwardDestination
from tests.events_support import write_event
from tests.support.downstream import Downstream, Received, new_secret, ok
from tests.support.gateways import charge, post
from tests.support.gopay_signer import GoPaySigner

MakeOrder = Callable[..., Awaitable[asyncpg.Record]]
Serve = Callable[[Config], Awaitable[Any]]


def destination(downstream: Downstream, **kw: Any) -> ForwardDestination:
    fields: dict[str, Any] = {"timeout_s": 2.0, "retry_s": (0.2,)} | kw
    return ForwardDestination(name="shop", url=downstream.url, secret=new_secret(), **fields)


@pytest.fixture
async def downstream() -> AsyncIterator[Downstream]:
    server = await Downstream().start()
    yield server
    await server.close()


Forward = Callable[..., Awaitable[tuple[Any, ForwardDestination]]]


@pytest.fixture
def forward(
    db: asyncpg.Connection, config: Config, serve_app: Serve, downstream: Downstream
) -> Forward:
    """Serve the receiver forwarding to `downstream` (destination "shop", options `kw`)."""

    async def start(**kw: Any) -> tuple[Any, ForwardDestination]:
        dest = destination(downstream, **kw)
        return await serve_app(replace(config, forward=(dest,))), dest

    return start


def counted(destination: str, result: str) -> float:
    value = REGISTRY.get_sample_value(
        "receiver_deliveries_total", {"destination": destination, "result": result}
    )
    return value or 0.0


async def deliveries(db: asyncpg.Connection) -> list[asyncpg.Record]:
    return list(await db.fetch("SELECT * FROM deliveries ORDER BY event_id"))


async def wait_rows(db: asyncpg.Connection, sql: str, *args: Any, wait_s: float = 30.0) -> Any:
    """The value of `sql` once it is true-ish."""
    deadline = time.monotonic() + wait_s
    while not (value := await db.fetchval(sql, *args)):
        assert time.monotonic() < deadline, f"not within {wait_s} s: {sql}"
        await asyncio.sleep(0.05)
    return value


async def test_an_event_is_forwarded_signed_as_standard_webhooks(
    db: asyncpg.Connection,
    forward: Forward,
    signer: GoPaySigner,
    make_order: MakeOrder,
    downstream: Downstream,
) -> None:
    client, dest = await forward()
    await make_order("F1")
    assert (await post(client, signer, charge("F1", pay_amount="100.000")))[0] == 200
    (got,) = await downstream.wait_for(1)
    payload = standardwebhooks.Webhook(dest.secret).verify(got.body, got.headers)
    assert payload["type"] == "order.paid"
    data = payload["data"]
    assert (data["out_trade_no"], data["amount"], data["paid_amount"]) == ("F1", "100.00", "100.00")
    assert (data["provider"], data["currency"], data["source"]) == ("gopay", "CNY", "notify")
    event_id = await db.fetchval("SELECT id FROM order_events")
    assert got.webhook_id == payload["id"] == str(event_id)
    assert got.headers["Content-Type"] == "application/json"
    # By hand, as the specification writes it.
    key = base64.b64decode(dest.secret.removeprefix("whsec_"))
    signed = f"{got.webhook_id}.{got.headers['webhook-timestamp']}.".encode() + got.body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert got.headers["webhook-signature"] == f"v1,{expected}"
    await wait_rows(db, "SELECT count(*) FROM deliveries WHERE state = 'delivered'")
    (row,) = await deliveries(db)
    assert (row["destination"], row["attempts"], row["last_status"]) == ("shop", 1, 200)
    assert row["delivered_at"] is not None and row["last_reply"] == "ok"
    assert dest.secret not in json.dumps([str(v) for v in dict(row).values()])
    assert expected not in (row["last_request"] or "")


async def failing_once(kind: str, downstream: Downstream) -> Callable[[Received], Any]:
    async def answer(received: Received) -> web.StreamResponse:
        if len(downstream.received) > 1:
            return web.Response(text="ok")
        if kind == "500":
            return web.Response(status=500, text="oops")
        if kind == "redirect":
            raise web.HTTPFound("/elsewhere")
        await asyncio.sleep(5)  # past the destination's timeout
        return web.Response(text="too late")

    return answer


@pytest.mark.parametrize("kind", ["500", "timeout", "redirect"])
async def test_an_attempt_that_fails_is_retried_with_the_same_webhook_id(
    kind: str,
    db: asyncpg.Connection,
    forward: Forward,
    make_order: MakeOrder,
    downstream: Downstream,
) -> None:
    downstream.answer = await failing_once(kind, downstream)
    before = {r: counted("shop", r) for r in ("delivered", "retried")}
    await forward(timeout_s=1.0)
    order = await make_order("R1")
    with structlog.testing.capture_logs() as logs:
        await write_event(db, order["id"])
        first, second = await downstream.wait_for(2)
        await wait_rows(db, "SELECT count(*) FROM deliveries WHERE state = 'delivered'")
    assert first.webhook_id == second.webhook_id and first.body == second.body
    (row,) = await deliveries(db)
    assert row["attempts"] == 2
    ours = [e for e in logs if e.get("destination") == "shop"]
    assert [(e["event"], e["log_level"]) for e in ours if e["log_level"] != "debug"] == [
        ("delivery_retried", "warning")
    ]
    assert ours[0]["error"] and ours[0]["attempts"] == 1
    assert {r: counted("shop", r) - before[r] for r in before} == {"delivered": 1, "retried": 1}
    assert all(
        r.headers.get("Host", "").endswith(str(downstream.port)) for r in downstream.received
    )
    assert len(downstream.received) == 2  # the redirect was never followed


async def test_events_of_one_order_arrive_in_order_while_other_orders_flow(
    db: asyncpg.Connection, forward: Forward, make_order: MakeOrder, downstream: Downstream
) -> None:
    stuck, flowing = await make_order("A"), await make_order("B")
    refusals = 0

    async def answer(received: Received) -> web.StreamResponse:
        nonlocal refusals
        if received.event["data"]["out_trade_no"] == "A" and refusals < 3:
            refusals += 1
            return web.Response(status=503)
        return web.Response(text="ok")

    downstream.answer = answer
    await forward(retry_s=(0.5,))
    first = await write_event(db, stuck["id"], to_status="failed")
    second = await write_event(db, stuck["id"], from_status="failed", to_status="paid")
    other = await write_event(db, flowing["id"])
    await wait_rows(db, "SELECT count(*) = 3 FROM deliveries WHERE state = 'delivered'")
    ids = downstream.ids()
    assert ids.index(str(other)) < 3  # B did not wait for A's retries
    a_ids = [i for i in ids if i in (str(first), str(second))]
    assert a_ids == [str(first)] * 4 + [str(second)]


async def test_a_held_transaction_delays_forwarding_and_skips_nothing(
    db: asyncpg.Connection,
    migrated: str,
    forward: Forward,
    make_order: MakeOrder,
    downstream: Downstream,
) -> None:
    await forward()
    held_order, later_order = await make_order("H1"), await make_order("H2")
    writer = await asyncpg.connect(migrated)
    try:
        held = writer.transaction()
        await held.start()
        held_id = await write_event(writer, held_order["id"])
        later_id = await write_event(db, later_order["id"])
        await asyncio.sleep(1.5)  # several forwarding passes
        assert downstream.received == []
        await held.commit()
    finally:
        await writer.close()
    await downstream.wait_for(2)
    assert sorted(downstream.ids()) == sorted([str(held_id), str(later_id)])


async def test_a_delivery_given_up_is_failed_until_retried(
    db: asyncpg.Connection, forward: Forward, make_order: MakeOrder, downstream: Downstream
) -> None:
    downstream.answer = refuse
    await forward(give_up_after_s=1)
    order = await make_order("G1")
    event_id = await write_event(db, order["id"])
    await wait_rows(db, "SELECT count(*) FROM deliveries WHERE state = 'failed'")
    (row,) = await deliveries(db)
    assert row["last_status"] == 500 and row["last_error"] == "HTTP 500"
    assert counted("shop", "failed") >= 1
    tried = len(downstream.received)
    await asyncio.sleep(1.0)
    assert len(downstream.received) == tried  # failed: no more attempts
    downstream.answer = ok
    from receiver.events.deliveries import retry  # noqa: PLC0415

    assert [r["event_id"] for r in await retry(db, event_ids=[], failed=True)] == [event_id]
    await wait_rows(db, "SELECT count(*) FROM deliveries WHERE state = 'delivered'")
    assert downstream.ids()[-1] == str(event_id)


async def test_a_hanging_destination_slows_no_notification_and_no_other_destination(
    db: asyncpg.Connection,
    config: Config,
    serve_app: Serve,
    signer: GoPaySigner,
    make_order: MakeOrder,
    downstream: Downstream,
) -> None:
    hanging = await Downstream(answer=never_answer).start()
    try:
        dests = (
            destination(downstream),
            replace(destination(hanging, timeout_s=30.0), name="hanging"),
        )
        client = await serve_app(replace(config, forward=dests))
        for i in range(12):
            await make_order(f"S{i}")
            assert (await post(client, signer, charge(f"S{i}")))[0] == 200
        await hanging.wait_for(12)  # twelve attempts hang there from now on
        slowest = 0.0
        for i in range(12, 24):
            await make_order(f"S{i}")
            started = time.monotonic()
            assert (await post(client, signer, charge(f"S{i}")))[0] == 200
            slowest = max(slowest, time.monotonic() - started)
        await downstream.wait_for(24, wait_s=20.0)
        assert slowest < 1.0, f"a notification took {slowest:.3f} s"
    finally:
        await hanging.close()


async def refuse(_received: Received) -> web.StreamResponse:
    return web.Response(status=500)


async def never_answer(_received: Received) -> web.StreamResponse:
    await asyncio.sleep(3600)
    return web.Response()


async def test_the_lag_gauge_shows_the_oldest_undelivered_event(
    db: asyncpg.Connection, forward: Forward, make_order: MakeOrder, downstream: Downstream
) -> None:
    downstream.answer = refuse
    await forward(retry_s=(60,))
    await write_event(db, (await make_order("LAG1"))["id"])
    await downstream.wait_for(1)
    deadline = time.monotonic() + 15
    while not (lag := REGISTRY.get_sample_value(LAG, {"destination": "shop"}) or 0.0):
        assert time.monotonic() < deadline, "the lag stayed 0"
        await asyncio.sleep(0.2)
    age = await db.fetchval("SELECT extract(epoch FROM now() - created_at) FROM order_events")
    assert 0 < lag <= float(age) + 0.5


LAG = "receiver_delivery_lag_seconds"
