"""`receiver demo`'s verdict: it exits 0 only when every case did what it should (pure)."""

from __future__ import annotations

from dataclasses import replace

from receiver.run.demo import LOST, Seen, problems

RECOVERED = Seen(
    gateway="gopay",
    case=LOST,
    order="G-1003",
    status="-",
    reply="(never sent; order query +1.0 s)",
    source="query",
    outcome="applied",
)
ALL_ORDERS = [
    ("gopay", "G-1001", "100.00", "paid", "100.00", "1"),
    ("gopay", "G-1002", "50.00", "pending", "-", "0"),
    ("gopay", "G-1003", "30.00", "paid", "30.00", "1"),
    ("baofoo", "B-2001", "1.00", "paid", "1.00", "1"),
    ("baofoo", "B-2002", "2.00", "pending", "-", "0"),
    ("baofoo", "B-2003", "3.00", "paid", "3.00", "1"),
]


def test_a_lost_notification_recovered_by_an_order_query_is_as_it_should_be() -> None:
    assert problems([RECOVERED], ALL_ORDERS) == []


def test_a_lost_notification_not_recovered_fails_the_demo() -> None:
    missed = replace(RECOVERED, source="-", outcome="not recovered")
    assert problems([missed], ALL_ORDERS) == ["gopay lost notification: not recovered"]


def test_a_lost_notification_applied_from_any_source_but_a_query_fails_the_demo() -> None:
    pushed = replace(RECOVERED, source="notify")
    assert problems([pushed], ALL_ORDERS) == ["gopay lost notification: applied"]


def test_an_order_left_pending_or_moved_twice_fails_the_demo() -> None:
    pending = ("gopay", "G-1003", "30.00", "pending", "-", "0")
    twice = ("baofoo", "B-2003", "3.00", "paid", "3.00", "2")
    orders = [row for row in ALL_ORDERS if row[1] not in ("G-1003", "B-2003")]
    assert problems([RECOVERED], [*orders, pending, twice]) == [
        "order G-1003: pending with 0 events, expected paid with 1",
        "order B-2003: paid with 2 events, expected paid with 1",
    ]
