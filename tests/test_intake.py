"""The one intake's result, flattened in one place for log lines, reports and command output."""

from __future__ import annotations

from receiver.core.notification import Outcome, Status
from receiver.core.planning import Decision
from receiver.errors import Rejected
from receiver.sources.intake import Received
from receiver.store.ledger import Result


def test_a_stored_result_flattens_to_what_was_committed() -> None:
    result = Result(
        outcome=Outcome.APPLIED,
        notification_id=7,
        merchant_id="100001",
        out_trade_no="A1",
        order_id=3,
        from_status=Status.PENDING,
        to_status=Status.PAID,
        detail="verified (base64)",
    )
    received = Received(remote_addr="203.0.113.7", result=result)
    assert received.outcome is Outcome.APPLIED
    assert received.fields() == {
        "merchant_id": "100001",
        "out_trade_no": "A1",
        "outcome": "applied",
        "notification_id": 7,
        "order_id": 3,
        "from_status": "pending",
        "to_status": "paid",
        "reason": "verified (base64)",
    }


def test_a_dry_run_flattens_to_what_would_be_done() -> None:
    decision = Decision(
        Outcome.APPLIED_LATE, order_id=4, from_status=Status.CLOSED, to_status=Status.PAID
    )
    received = Received(decision=decision, merchant_id="100001", out_trade_no="A2")
    assert received.outcome is Outcome.APPLIED_LATE
    assert received.fields() == {
        "merchant_id": "100001",
        "out_trade_no": "A2",
        "outcome": "applied_late",
        "order_id": 4,
        "from_status": "closed",
        "to_status": "paid",
        "reason": "",
    }


def test_a_refusal_read_but_not_stored_keeps_its_outcome_and_reason() -> None:
    rejected = Rejected(Outcome.BAD_SIGNATURE, "no key verifies", merchant_id="100001")
    received = Received(rejected=rejected, merchant_id="100001", out_trade_no=None)
    assert received.outcome is Outcome.BAD_SIGNATURE
    assert received.fields() == {
        "merchant_id": "100001",
        "out_trade_no": None,
        "outcome": "bad_signature",
        "reason": "no key verifies",
    }


def test_nothing_committed_has_no_outcome_and_says_why() -> None:
    rejected = Rejected(Outcome.MALFORMED, "charge is missing")
    received = Received(
        rejected=rejected, unavailable=True, note="database unavailable: connection refused"
    )
    assert received.outcome is None
    assert received.fields() == {
        "merchant_id": None,
        "out_trade_no": None,
        "reason": "database unavailable: connection refused",
    }
