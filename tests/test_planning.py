"""Pure planning: a batch of verified notifications decided against the orders' states."""

from __future__ import annotations

from receiver.notification import Notification, Outcome, Status
from receiver.planning import PAYOUT_DETAIL, OrderState, plan_batch

M = "100001"
KEY = ("gopay", M, "P1")


def note(out_trade_no: str = "P1", **kw: object) -> Notification:
    base: dict[str, object] = {
        "provider": "gopay",
        "merchant_id": M,
        "out_trade_no": out_trade_no,
        "target": Status.PAID,
        "paid_amount_minor": 10000,
        "order_amount_minor": 10000,
        "currency": "CNY",
    }
    return Notification(**(base | kw))  # type: ignore[arg-type]


def pending(order_id: int = 7, **kw: object) -> OrderState:
    base: dict[str, object] = {
        "id": order_id,
        "status": Status.PENDING,
        "amount_minor": 10000,
        "currency": "CNY",
        "channel": None,
    }
    return OrderState(**(base | kw))  # type: ignore[arg-type]


def test_payout_is_channel_mismatch_and_keeps_the_order_link():
    plan = plan_batch([note(payout=True, nonce="N1")], {KEY: pending()}, seen=set())
    (decision,) = plan.decisions
    assert (decision.outcome, decision.order_id, decision.detail) == (
        Outcome.CHANNEL_MISMATCH,
        7,
        PAYOUT_DETAIL,
    )
    assert (decision.from_status, decision.to_status, plan.moves) == (None, None, {})
    assert plan.claims == ["N1"]  # its nonce is used up like any other


def test_payout_for_no_known_order_is_still_channel_mismatch():
    plan = plan_batch([note(payout=True)], {}, seen=set())
    (decision,) = plan.decisions
    assert (decision.outcome, decision.order_id) == (Outcome.CHANNEL_MISMATCH, None)


def test_payout_never_moves_even_an_order_it_matches():
    plan = plan_batch([note(payout=True), note()], {KEY: pending()}, seen=set())
    assert [d.outcome for d in plan.decisions] == [Outcome.CHANNEL_MISMATCH, Outcome.APPLIED]
    assert plan.moves[7].old_status is Status.PENDING
