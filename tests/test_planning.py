"""Pure planning: a batch of verified notifications decided against the orders' states."""

from __future__ import annotations

from datetime import UTC, datetime

from receiver.core.notification import Notification, Outcome, ReviewReason, Status, money
from receiver.core.planning import (
    HELD_BACK,
    PAYOUT_DETAIL,
    Decision,
    Move,
    OrderState,
    Plan,
    Review,
    changes_nothing,
    plan_batch,
)

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


# --- money held for a person: reviews ----------------------------------------------------------


def only(plan: Plan) -> Decision:
    (decision,) = plan.decisions
    return decision


def test_amount_mismatch_opens_a_review_saying_what_came_in_money():
    decision = only(plan_batch([note(paid_amount_minor=5000)], {KEY: pending()}, seen=set()))
    assert decision.review == Review(
        ReviewReason.AMOUNT_MISMATCH,
        5000,
        "CNY",
        "gopay reported paid 50.00 CNY for an order of 100.00 CNY (pending): "
        "the gateway's order amount 100.00 CNY",
    )


def test_currency_mismatch_opens_a_review_in_the_currency_that_came():
    decision = only(plan_batch([note(currency="INR")], {KEY: pending()}, seen=set()))
    assert decision.review is not None
    assert (decision.review.reason, decision.review.amount_minor, decision.review.currency) == (
        ReviewReason.CURRENCY_MISMATCH,
        10000,
        "INR",
    )
    assert "paid 100.00 INR for an order of 100.00 CNY" in decision.review.detail


def test_a_mismatch_without_a_currency_is_reviewed_in_the_orders():
    n = note(currency=None, order_amount_minor=9000, paid_amount_minor=9000)
    decision = only(plan_batch([n], {KEY: pending()}, seen=set()))
    assert decision.outcome is Outcome.AMOUNT_MISMATCH and decision.review is not None
    assert decision.review.currency == "CNY"
    assert decision.review.detail.endswith("the gateway's order amount 90.00 CNY")


def test_a_matching_payment_opens_no_review():
    decision = only(plan_batch([note()], {KEY: pending()}, seen=set()))
    assert (decision.outcome, decision.review) == (Outcome.APPLIED, None)


def test_a_late_payment_opens_an_applied_late_review():
    order = pending(status=Status.CLOSED)
    decision = only(plan_batch([note()], {KEY: order}, seen=set()))
    assert decision.outcome is Outcome.APPLIED_LATE
    assert decision.review == Review(
        ReviewReason.APPLIED_LATE,
        10000,
        "CNY",
        "gopay reported paid 100.00 CNY for an order of 100.00 CNY (closed): paid after closed",
    )


def test_a_query_that_says_paid_without_pay_amount_never_settles_held_money():
    order = pending(held=True)
    decision = only(plan_batch([note(paid_amount_stated=False)], {KEY: order}, seen=set()))
    assert (decision.outcome, decision.to_status, decision.detail) == (
        Outcome.AMOUNT_MISMATCH,
        None,
        HELD_BACK,
    )
    assert decision.review is not None
    assert (decision.review.reason, decision.review.amount_minor) == (
        ReviewReason.AMOUNT_MISMATCH,
        10000,
    )
    assert decision.review.detail == (
        f"gopay reported paid 100.00 CNY for an order of 100.00 CNY (pending): {HELD_BACK}"
    )


def test_held_money_still_lets_the_order_fail_or_close():
    plan = plan_batch([note(target=Status.CLOSED)], {KEY: pending(held=True)}, seen=set())
    assert (only(plan).outcome, only(plan).review) == (Outcome.APPLIED, None)


def test_an_order_without_held_money_is_settled_by_a_query_without_pay_amount():
    decision = only(plan_batch([note(paid_amount_stated=False)], {KEY: pending()}, seen=set()))
    assert (decision.outcome, decision.review) == (Outcome.APPLIED, None)


def test_a_mismatch_holds_the_rest_of_the_batch_too():
    notes = [note(paid_amount_minor=5000), note(paid_amount_stated=False)]
    plan = plan_batch(notes, {KEY: pending()}, seen=set())
    assert [d.outcome for d in plan.decisions] == [Outcome.AMOUNT_MISMATCH] * 2
    assert plan.moves == {}


def test_a_second_payment_with_other_money_is_a_duplicate_with_a_review():
    order = pending(status=Status.PAID, channel="103", paid_amount_minor=3000)
    n = note(
        provider="baofoo",
        paid_amount_minor=7000,
        order_amount_minor=None,
        currency=None,
        underpay_channels=frozenset({"103"}),
    )
    decision = only(plan_batch([n], {("baofoo", M, "P1"): order}, seen=set()))
    assert (decision.outcome, decision.to_status) == (Outcome.DUPLICATE, None)
    assert decision.review == Review(
        ReviewReason.PAID_AMOUNT_DIFFERS,
        7000,
        "CNY",
        "baofoo reported paid 70.00 CNY for an order of 100.00 CNY (paid): recorded paid 30.00 CNY",
    )


def test_the_same_money_reported_again_is_a_plain_duplicate():
    order = pending(status=Status.PAID, paid_amount_minor=10000)
    decision = only(plan_batch([note()], {KEY: order}, seen=set()))
    assert (decision.outcome, decision.review) == (Outcome.DUPLICATE, None)


def test_a_paid_report_without_pay_amount_is_not_compared_with_the_recorded_money():
    order = pending(status=Status.PAID, paid_amount_minor=3000, channel="103")
    n = note(paid_amount_stated=False, underpay_channels=frozenset({"103"}))
    decision = only(plan_batch([n], {KEY: order}, seen=set()))
    assert (decision.outcome, decision.review) == (Outcome.DUPLICATE, None)


def test_a_batch_compares_a_second_payment_with_the_first_ones_money():
    card = frozenset({"103"})
    notes = [
        note(paid_amount_minor=3000, underpay_channels=card),
        note(paid_amount_minor=7000, underpay_channels=card),
    ]
    plan = plan_batch(notes, {KEY: pending(channel="103")}, seen=set())
    assert [d.outcome for d in plan.decisions] == [Outcome.APPLIED, Outcome.DUPLICATE]
    second = plan.decisions[1].review
    assert second is not None and second.reason is ReviewReason.PAID_AMOUNT_DIFFERS
    assert second.detail.endswith("recorded paid 30.00 CNY")
    assert plan.moves[7].paid_amount_minor == 3000


def test_a_batch_keeps_the_recorded_money_when_the_order_fails_and_then_is_paid():
    order = pending(status=Status.PAID, paid_amount_minor=10000)
    plan = plan_batch([note(target=Status.FAILED), note()], {KEY: order}, seen=set())
    assert [(d.outcome, d.review) for d in plan.decisions] == [
        (Outcome.STALE, None),
        (Outcome.DUPLICATE, None),
    ]


def test_a_pending_report_of_a_failed_order_then_paid_in_a_batch_records_that_money():
    order = pending(status=Status.FAILED, paid_amount_minor=None)
    plan = plan_batch([note(), note(paid_amount_minor=10000)], {KEY: order}, seen=set())
    assert [d.outcome for d in plan.decisions] == [Outcome.APPLIED_LATE, Outcome.DUPLICATE]
    assert plan.decisions[1].review is None


def test_a_cashier_mode_card_payment_that_pays_less_is_held():
    # No channel on the order: the customer chose the card at Baofoo's cashier.
    n = note(provider="baofoo", paid_amount_minor=3000, underpay_channels=frozenset({"103"}))
    decision = only(plan_batch([n], {("baofoo", M, "P1"): pending()}, seen=set()))
    assert decision.outcome is Outcome.AMOUNT_MISMATCH and decision.review is not None
    assert decision.review.reason is ReviewReason.AMOUNT_MISMATCH


def test_unknown_orders_and_payouts_open_no_review():
    plan = plan_batch([note(payout=True), note("P2")], {KEY: pending()}, seen=set())
    assert [d.review for d in plan.decisions] == [None, None]


def test_money_in_words():
    assert [money(0, "CNY"), money(5, "CNY"), money(123456, "INR")] == [
        "0.00 CNY",
        "0.05 CNY",
        "1234.56 INR",
    ]
    assert [money(-150, "CNY"), money(None, "CNY"), money(100, None)] == [
        "-1.50 CNY",
        "no amount",
        "1.00",
    ]


def test_a_failure_report_of_a_paid_order_is_not_compared_with_the_recorded_money():
    order = pending(status=Status.PAID, paid_amount_minor=3000)
    n = note(target=Status.FAILED, paid_amount_minor=7000, order_amount_minor=None)
    decision = only(plan_batch([n], {KEY: order}, seen=set()))
    assert (decision.outcome, decision.review) == (Outcome.STALE, None)


def test_a_waiting_report_with_the_wrong_amount_is_reviewed_as_pending():
    n = note(target=None, order_amount_minor=9000, paid_amount_minor=None)
    decision = only(plan_batch([n], {KEY: pending()}, seen=set()))
    assert decision.outcome is Outcome.AMOUNT_MISMATCH and decision.review is not None
    assert decision.review.detail.startswith(
        "gopay reported pending no amount for an order of 100.00 CNY (pending)"
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


def test_a_duplicate_that_opens_a_review_is_stored_not_counted():
    # A second verified payment with other money: the order stays paid, a person must look.
    review = Review(ReviewReason.PAID_AMOUNT_DIFFERS, 7000, "CNY", "recorded paid 30.00 CNY")
    assert not changes_nothing(Decision(Outcome.DUPLICATE, 1, Status.PAID, review=review))
