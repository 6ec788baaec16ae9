"""A stand-in `OrderQuerier` for the reconciler's tests: real answers, no network.

GoPay answers are charges signed with the test platform key and verified by the real GoPay
adapter (a forgery is refused by it); Baofoo answers are the `|`-separated reply text with the
Notification the real query client would make of it. The end-to-end tests over a real socket
come with the real query clients.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import aiohttp

from receiver.core.notification import Inbound, Notification, Status
from receiver.errors import Rejected
from receiver.gateways import OrderRef, QueryAnswer, QueryResult
from receiver.gateways.gopay import GoPayGateway
from tests.support.gopay_signer import GoPaySigner

Answer = Callable[[OrderRef], QueryAnswer]
_GOPAY_STATUS = {"paid": 2, "failed": 3, "closed": 0, "pending": 1}
_RESULT = {"paid": QueryResult.PAID, "failed": QueryResult.FAILED}
_RESULT |= {"closed": QueryResult.CLOSED, "pending": QueryResult.PENDING}


class FakeQuerier:
    """Answers each order with `answer(order)` after `delay_s`; `hang` never answers; records
    every order asked about."""

    def __init__(
        self, provider: str, answer: Answer, *, hang: bool = False, delay_s: float = 0.0
    ) -> None:
        self.provider = provider
        self.answer = answer
        self.hang = hang
        self.delay_s = delay_s
        self.asked: list[str] = []

    def not_queryable(self, order: OrderRef) -> str | None:
        if order.provider == "gopay" and order.channel == "none":
            return "the order has no channel and the merchant no default_channel"
        return None

    async def query(
        self, session: aiohttp.ClientSession, order: OrderRef, *, timeout_s: float
    ) -> QueryAnswer:
        self.asked.append(order.out_trade_no)
        await asyncio.sleep(self.delay_s)
        if self.hang:
            await asyncio.Event().wait()
        return self.answer(order)


def gopay_answer(gateway: GoPayGateway, signer: GoPaySigner, status: str, **charge: Any) -> Answer:
    """GoPay says `status` (paid, failed, closed, pending) about the order asked."""

    def answer(order: OrderRef) -> QueryAnswer:
        amount = f"{Decimal(order.amount_minor) / 100:.3f}"
        fields = {
            "mid": int(order.merchant_id),
            "out_trade_no": order.out_trade_no,
            "in_trade_no": "Q" + order.out_trade_no,
            "channel": order.channel or "gopay_banktransfer",
            "amount": amount,  # no pay_amount: GoPay's order query never carries one
            "currency": order.currency,
            "status": _GOPAY_STATUS[status],
        } | charge
        body, headers = signer.notify(fields)
        inbound = Inbound("gopay", body, headers, "application/json", None, None)
        try:
            n = gateway.parse(inbound, fresh=False)
        except Rejected as rejected:
            return QueryAnswer(
                result=QueryResult.REFUSED,
                reason=rejected.reason,
                inbound=inbound,
                rejected=rejected,
            )
        return QueryAnswer(result=_RESULT[status], inbound=inbound, notification=n)

    return answer


def baofoo_answer(check_result: str = "Y", *, fen: int | None = None) -> Answer:
    """Baofoo's reply text (signature not checked here) and the Notification made of it."""
    targets = {"Y": Status.PAID, "F": Status.FAILED, "P": None}

    def answer(order: OrderRef) -> QueryAnswer:
        paid = order.amount_minor if fen is None else fen
        body = f"{order.merchant_id}|10000001|{order.out_trade_no}|{check_result}|{paid}|"
        body += "20260101120000|0123456789abcdef0123456789abcdef"
        inbound = Inbound("baofoo", body.encode(), {}, "text/plain", None, None)
        target = targets[check_result]
        n = Notification(
            provider="baofoo",
            merchant_id=order.merchant_id,
            out_trade_no=order.out_trade_no,
            target=target,
            paid_amount_minor=paid if target is Status.PAID else None,
            currency="CNY",
        )
        result = {"Y": QueryResult.PAID, "F": QueryResult.FAILED, "P": QueryResult.PENDING}
        return QueryAnswer(result=result[check_result], inbound=inbound, notification=n)

    return answer


def plain_answer(result: QueryResult, reason: str) -> Answer:
    """An answer that carries nothing to store: NOT_FOUND or ERROR."""
    return lambda _order: QueryAnswer(result=result, reason=reason)
