"""Pure planning: decide a batch of verified notifications against the orders' current states.

Every source of truth (a pushed notification, an order-query reply, a replay) goes through
`plan_batch`; the ledger only reads the states it needs and writes the plan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from receiver.core.notification import (
    Notification,
    Outcome,
    ReviewReason,
    Status,
    check_amount,
    decide_transition,
    held_back,
    money,
    paid_amount_differs,
)

OrderKey = tuple[str, str, str]  # provider, merchant_id, out_trade_no

PAYOUT_DETAIL = "a payout (disbursement) never moves a payment order"


# OrderState and Decision are named tuples: immutable, and built several per batch (see Inbound).
class OrderState(NamedTuple):
    """An order row as locked at the start of a batch."""

    id: int
    status: Status
    amount_minor: int
    currency: str
    channel: str | None
    paid_amount_minor: int | None = None  # as recorded when the order was paid
    held: bool = False  # an amount or currency mismatch of this order is open for review


class Review(NamedTuple):
    """A review to open on the decided order: what came, for a person to look at."""

    reason: ReviewReason
    amount_minor: int | None
    currency: str
    detail: str


class Decision(NamedTuple):
    """What one notification comes to, before it is written."""

    outcome: Outcome
    order_id: int | None = None
    from_status: Status | None = None
    to_status: Status | None = None
    detail: str = ""
    review: Review | None = None


@dataclass(slots=True)
class Move:
    """One order's net change over a batch: from its locked status to its last new one."""

    order_id: int
    old_status: Status
    new_status: Status
    late: bool = False
    paid_amount_minor: int | None = None
    paid_at: datetime | None = None
    provider_trade_no: str | None = None


@dataclass(slots=True)
class Plan:
    decisions: list[Decision] = field(default_factory=list)
    moves: dict[int, Move] = field(default_factory=dict)
    claims: list[str] = field(default_factory=list)  # nonces this batch uses first


_HOLDING = frozenset({Outcome.AMOUNT_MISMATCH, Outcome.CURRENCY_MISMATCH})


def order_key(n: Notification) -> OrderKey:
    """The unique key of the order a notification names."""
    return (n.provider, n.merchant_id, n.out_trade_no)


def plan_batch(
    notes: Sequence[Notification], orders: Mapping[OrderKey, OrderState], seen: set[str]
) -> Plan:
    """Decide a batch in arrival order, as if each notification were written alone."""
    plan = Plan()
    # Each order as the batch so far has left it: status, recorded paid amount, money held.
    now = dict(orders)
    used: set[str] = set()
    for n in notes:
        decision = _decide_one(n, now, seen=seen, used=used)
        plan.decisions.append(decision)
        key = order_key(n)
        if decision.outcome in _HOLDING:
            now[key] = now[key]._replace(held=True)
        if decision.to_status is not None:
            now[key] = _moved(now[key], n, decision.to_status)
            _record_move(plan, n, decision)
    plan.claims = list(used)
    return plan


def _moved(order: OrderState, n: Notification, status: Status) -> OrderState:
    """The order after a move, as WRITE_BATCH leaves it: only a payment records an amount."""
    if status is Status.PAID:
        return order._replace(status=status, paid_amount_minor=n.paid_amount_minor)
    return order._replace(status=status)


def changes_nothing(d: Decision) -> bool:
    """True for a decision that moves nothing and opens nothing: the gateway says still
    waiting, or the status the order already has, with no review to open. An order-query
    reply that comes to this is counted, not stored (a row per order per query interval)."""
    return (
        d.to_status is None and d.review is None and d.outcome in (Outcome.NOOP, Outcome.DUPLICATE)
    )


def _decide_one(
    n: Notification,
    orders: Mapping[OrderKey, OrderState],
    *,
    seen: set[str],
    used: set[str],
) -> Decision:
    if n.nonce is not None:
        if n.nonce in used or n.nonce in seen:
            return Decision(Outcome.REPLAYED, detail="nonce already seen")
        used.add(n.nonce)
    order = orders.get(order_key(n))
    if n.payout:
        order_id = None if order is None else order.id
        return Decision(Outcome.CHANNEL_MISMATCH, order_id, detail=PAYOUT_DETAIL)
    if order is None:
        return Decision(Outcome.UNKNOWN_ORDER, detail="no such order")
    mismatch = check_amount(
        n, amount_minor=order.amount_minor, currency=order.currency, channel=order.channel
    )
    if mismatch is not None:
        detail = _mismatch_detail(n, order)
        return Decision(mismatch, order.id, detail=detail, review=_held(n, order, mismatch))
    if held_back(n, held=order.held):
        held = _review(ReviewReason.AMOUNT_MISMATCH, n, order, HELD_BACK)
        return Decision(Outcome.AMOUNT_MISMATCH, order.id, detail=HELD_BACK, review=held)
    t = decide_transition(order.status, n.target)
    review: Review | None = None
    if t.outcome is Outcome.APPLIED_LATE:
        review = _review(ReviewReason.APPLIED_LATE, n, order, f"paid after {order.status}")
    elif paid_amount_differs(n, recorded_minor=order.paid_amount_minor):
        recorded = money(order.paid_amount_minor, order.currency)
        review = _review(ReviewReason.PAID_AMOUNT_DIFFERS, n, order, f"recorded paid {recorded}")
    return Decision(t.outcome, order.id, order.status, t.new_status, review=review)


HELD_BACK = "says paid while money reported for this order is held for review"


def _held(n: Notification, order: OrderState, mismatch: Outcome) -> Review:
    reason = ReviewReason(mismatch.value)  # amount_mismatch and currency_mismatch share names
    gateway_amount = money(n.order_amount_minor, n.currency or order.currency)
    return _review(reason, n, order, f"the gateway's order amount {gateway_amount}")


def _review(reason: ReviewReason, n: Notification, order: OrderState, why: str) -> Review:
    """A review saying what came (paid amount with currency) against the order."""
    currency = n.currency or order.currency
    words = (
        f"{n.provider} reported {n.target or 'pending'} {money(n.paid_amount_minor, currency)} "
        f"for an order of {money(order.amount_minor, order.currency)} ({order.status}): {why}"
    )
    return Review(reason, n.paid_amount_minor, currency, words)


def _record_move(plan: Plan, n: Notification, d: Decision) -> None:
    assert d.order_id is not None and d.from_status is not None and d.to_status is not None
    move = plan.moves.setdefault(d.order_id, Move(d.order_id, d.from_status, d.to_status))
    move.new_status = d.to_status
    move.late = move.late or d.outcome is Outcome.APPLIED_LATE
    move.provider_trade_no = n.provider_trade_no or move.provider_trade_no
    if d.to_status is Status.PAID:
        move.paid_amount_minor, move.paid_at = n.paid_amount_minor, n.paid_at


def _mismatch_detail(n: Notification, order: OrderState) -> str:
    channel = f" channel {order.channel}" if order.channel else ""
    return (
        f"order {order.amount_minor} {order.currency}{channel}; "
        f"notification amount {n.order_amount_minor} paid {n.paid_amount_minor} {n.currency}"
    )
