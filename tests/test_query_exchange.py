"""Order queries on the wire, without a database: what each querier sends to a loopback gateway,
and what it makes of the reply, a slow reply, or an order it cannot ask about."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from receiver.config import BaofooMerchant
from receiver.gateways import OrderRef, QueryAnswer, QueryResult
from receiver.gateways.baofoo.query import BaofooQuerier
from receiver.gateways.gopay.query import GoPayQuerier
from tests.support.queries import (
    MD5_KEY,
    MEMBER,
    TERMINAL,
    TRANS,
    VECTOR_REPLY_BODY,
    VECTOR_REPLY_HEADERS,
    VECTOR_REQUEST_BODY,
    VECTOR_REQUEST_SIGNATURE,
    _order,
    _querier,
    signed_reply,
)

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]


@dataclass
class Gateway:
    """A loopback gateway: records each request, answers with one canned reply."""

    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    seen: list[tuple[str, list[tuple[bytes, bytes]], bytes]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((request.path, list(request.raw_headers), await request.read()))
        await asyncio.sleep(self.delay_s)
        return web.Response(body=self.body, headers=self.headers)

    async def serve(self, aiohttp_server: ServerFactory) -> str:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        server = await aiohttp_server(app)
        return str(server.make_url("")).rstrip("/")


def _gopay_gateway(delay_s: float = 0.0) -> Gateway:
    headers = {k: v for k, v in VECTOR_REPLY_HEADERS.items() if k.startswith("x-ca-")}
    return Gateway(VECTOR_REPLY_BODY, headers | {"Content-Type": "application/json"}, delay_s)


def _baofoo_order() -> OrderRef:
    return _order(provider="baofoo", merchant_id=MEMBER, out_trade_no=TRANS, channel=None)


def _baofoo_querier(url: str) -> BaofooQuerier:
    return BaofooQuerier(
        query_url=url + "/query", merchants=[BaofooMerchant(MEMBER, TERMINAL, MD5_KEY)]
    )


async def _ask(
    querier: GoPayQuerier | BaofooQuerier, order: OrderRef, timeout_s: float = 5.0
) -> QueryAnswer:
    async with aiohttp.ClientSession() as session:
        return await querier.query(session, order, timeout_s=timeout_s)


async def test_a_gopay_query_posts_the_signed_vector_request_and_applies_the_verified_reply(
    aiohttp_server: ServerFactory,
) -> None:
    gateway = _gopay_gateway()
    querier = _querier(api_url=await gateway.serve(aiohttp_server))
    answer = await _ask(querier, _order())
    assert answer.result is QueryResult.PAID
    assert (
        answer.notification is not None
        and answer.notification.out_trade_no == _order().out_trade_no
    )
    [(path, raw_headers, body)] = gateway.seen
    assert (path, body) == ("/pay/orderquery", VECTOR_REQUEST_BODY)
    sent = dict(raw_headers)
    assert sent[b"x-ca-signature"] == VECTOR_REQUEST_SIGNATURE.encode()
    assert sent[b"x-ca-auth"] == b"the-api-key"
    assert sent[b"x-ca-resturl"] == querier.url.encode()
    assert sent[b"Content-Type"] == b"application/json; charset=UTF-8"


async def test_a_baofoo_query_posts_the_signed_form_and_applies_the_verified_reply(
    aiohttp_server: ServerFactory,
) -> None:
    gateway = Gateway(signed_reply("Y"), {"Content-Type": "text/plain"})
    querier = _baofoo_querier(await gateway.serve(aiohttp_server))
    answer = await _ask(querier, _baofoo_order())
    assert answer.result is QueryResult.PAID
    assert answer.notification is not None and answer.notification.paid_amount_minor == 12345
    [(path, raw_headers, body)] = gateway.seen
    assert (path, body) == ("/query", querier.build_request(_baofoo_order()))
    sent = dict(raw_headers)
    assert sent[b"Content-Type"] == b"application/x-www-form-urlencoded"
    assert sent[b"Accept"] == b"text/plain"


@pytest.mark.parametrize("provider", ["gopay", "baofoo"])
async def test_a_reply_slower_than_the_timeout_is_an_error(
    aiohttp_server: ServerFactory, provider: str
) -> None:
    if provider == "gopay":
        gateway = _gopay_gateway(delay_s=1.0)
        querier: GoPayQuerier | BaofooQuerier = _querier(
            api_url=await gateway.serve(aiohttp_server)
        )
        order = _order()
    else:
        gateway = Gateway(signed_reply("Y"), delay_s=1.0)
        querier = _baofoo_querier(await gateway.serve(aiohttp_server))
        order = _baofoo_order()
    answer = await _ask(querier, order, timeout_s=0.1)
    assert answer == QueryAnswer(result=QueryResult.ERROR, reason="no reply within 0.1s")


@pytest.mark.parametrize(
    ("provider", "reason"),
    [
        ("gopay", "GoPay merchant 999 is not configured"),
        ("baofoo", "Baofoo MemberID 999 is not configured"),
    ],
)
async def test_an_order_that_cannot_be_queried_is_an_error_and_nothing_is_sent(
    aiohttp_server: ServerFactory, provider: str, reason: str
) -> None:
    gateway = Gateway(b"")
    url = await gateway.serve(aiohttp_server)
    querier = _querier(api_url=url) if provider == "gopay" else _baofoo_querier(url)
    answer = await _ask(querier, _order(provider=provider, merchant_id="999"))
    assert answer == QueryAnswer(result=QueryResult.ERROR, reason=reason)
    assert gateway.seen == []
