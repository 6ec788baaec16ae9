"""Pure planning: a batch of verified notifications decided against the orders' states."""

from __future__ import annotations

from datetime import UTC, datetime

from receiver.notification import Notification, Outcome, Status
from receiver.planning import PAYOUT_DETAIL, Decision, Move, OrderState, changes_nothing, plan_batch

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


def test_amount_mismatch_keeps_the_order_link_and_says_what_differs():
    plan = plan_batch([note(paid_amount_minor=9900)], {KEY: pending()}, seen=set())
    (decision,) = plan.decisions
    assert (decision.outcome, decision.order_id, decision.to_status) == (
        Outcome.AMOUNT_MISMATCH,
        7,
        None,
    )
    assert decision.detail == "order 10000 CNY; notification amount 10000 paid 9900 CNY"
    assert plan.moves == {}


def test_mismatch_detail_names_the_orders_channel():
    order = pending(channel="103")
    plan = plan_batch([note(currency="INR")], {KEY: order}, seen=set())
    (decision,) = plan.decisions
    assert (decision.outcome, decision.order_id) == (Outcome.CURRENCY_MISMATCH, 7)
    assert decision.detail == (
        "order 10000 CNY channel 103; notification amount 10000 paid 10000 INR"
    )


def test_prepaid_card_order_may_be_underpaid_through_planning():
    underpaid = note(order_amount_minor=None, paid_amount_minor=5000, underpay_channels={"103"})
    plan = plan_batch([underpaid], {KEY: pending(channel="103")}, seen=set())
    assert [d.outcome for d in plan.decisions] == [Outcome.APPLIED]
    assert plan.moves[7].paid_amount_minor == 5000


def test_unknown_order_and_replay_say_why():
    plan = plan_batch(
        [note("NONE", nonce="N1"), note(nonce="N1"), note(nonce="N0")],
        {KEY: pending()},
        seen={"N0"},
    )
    assert [(d.outcome, d.order_id, d.detail) for d in plan.decisions] == [
        (Outcome.UNKNOWN_ORDER, None, "no such order"),
        (Outcome.REPLAYED, None, "nonce already seen"),
        (Outcome.REPLAYED, None, "nonce already seen"),
    ]
    assert plan.claims == ["N1"]


def test_a_plain_payment_is_not_late_and_records_what_was_paid():
    paid_at = datetime(2024, 3, 1, 4, 1, 30, tzinfo=UTC)
    n = note(provider_trade_no="P-1", paid_at=paid_at)
    plan = plan_batch([n], {KEY: pending()}, seen=set())
    assert plan.moves == {
        7: Move(
            order_id=7,
            old_status=Status.PENDING,
            new_status=Status.PAID,
            late=False,
            paid_amount_minor=10000,
            paid_at=paid_at,
            provider_trade_no="P-1",
        )
    }
    assert (plan.decisions[0].from_status, plan.decisions[0].to_status) == (
        Status.PENDING,
        Status.PAID,
    )


def test_a_failure_then_payment_in_one_batch_is_one_late_move_keeping_the_trade_number():
    failed = note(target=Status.FAILED, paid_amount_minor=0, provider_trade_no="P-1")
    paid = note(provider_trade_no=None)
    plan = plan_batch([failed, paid], {KEY: pending()}, seen=set())
    assert [d.outcome for d in plan.decisions] == [Outcome.APPLIED, Outcome.APPLIED_LATE]
    move = plan.moves[7]
    assert (move.old_status, move.new_status, move.late) == (Status.PENDING, Status.PAID, True)
    assert (move.provider_trade_no, move.paid_amount_minor) == ("P-1", 10000)


def test_a_failure_records_no_payment():
    plan = plan_batch([note(target=Status.FAILED, paid_amount_minor=0)], {KEY: pending()}, set())
    move = plan.moves[7]
    assert (move.new_status, move.late, move.paid_amount_minor, move.paid_at) == (
        Status.FAILED,
        False,
        None,
        None,
    )


def test_only_a_reply_that_moves_nothing_and_says_waiting_or_the_same_status_changes_nothing():
    assert changes_nothing(Decision(Outcome.NOOP, 1))
    assert changes_nothing(Decision(Outcome.DUPLICATE, 1, Status.PAID))
    assert not changes_nothing(Decision(Outcome.APPLIED, 1, Status.PENDING, Status.PAID))
    assert not changes_nothing(Decision(Outcome.APPLIED_LATE, 1, Status.FAILED, Status.PAID))
    # Stale, held and refused replies are stored as before.
    for outcome in (Outcome.STALE, Outcome.AMOUNT_MISMATCH, Outcome.UNKNOWN_ORDER):
        assert not changes_nothing(Decision(outcome, 1))
    # A decision that would move the order is never dropped, whatever its outcome says.
    assert not changes_nothing(Decision(Outcome.DUPLICATE, 1, Status.PENDING, Status.PAID))
