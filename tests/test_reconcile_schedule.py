"""The reconciler's schedule: pure decisions from created_at, the configuration and the gateway."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from receiver.config import ReconcileConfig
from receiver.core.schedule import (
    ASK,
    LATER,
    RETIRE,
    disposition,
    first_query_at,
    gave_up,
    is_due,
    min_gap_s,
    next_offset_s,
    next_query_at,
    poll_interval_s,
)
from receiver.store.ops import parse_duration

CONFIG = ReconcileConfig(
    first_after_s=300, intervals_s=(300, 600, 1800), give_up_after_s=86400, concurrency=8
)
CREATED = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("age_s", "next_s"),
    [
        (0, 300),  # first query first_after_s after creation
        (299.9, 300),
        (300, 600),  # at a point, the next one is after it
        (601, 1200),  # first + 300 + 600
        (1200, 3000),  # + 1800
        (3000, 4800),  # the last interval repeats
        (4799, 4800),
        (10000, 10200),  # 3000 + 4 * 1800
    ],
)
def test_next_query_is_the_first_schedule_point_after_the_orders_age(age_s, next_s):
    assert next_offset_s(age_s, CONFIG) == next_s


def test_a_reconciler_that_was_down_resumes_at_the_next_point_without_catching_up():
    now = CREATED + timedelta(hours=5)  # every point before now was missed
    assert next_query_at(created_at=CREATED, now=now, provider="gopay", config=CONFIG) == (
        CREATED + timedelta(seconds=19200)  # 3000 + 9 * 1800
    )


def test_baofoo_is_never_due_again_within_a_minute():
    tight = ReconcileConfig(first_after_s=1, intervals_s=(5,))
    now = CREATED + timedelta(seconds=2)
    assert next_query_at(created_at=CREATED, now=now, provider="baofoo", config=tight) == (
        now + timedelta(seconds=60)
    )
    assert next_query_at(created_at=CREATED, now=now, provider="gopay", config=tight) == (
        CREATED + timedelta(seconds=6)
    )


def test_baofoo_waits_for_its_next_schedule_point_when_that_is_more_than_a_minute_away():
    slow = ReconcileConfig(first_after_s=1, intervals_s=(300,))
    now = CREATED + timedelta(seconds=2)
    assert next_query_at(created_at=CREATED, now=now, provider="baofoo", config=slow) == (
        CREATED + timedelta(seconds=301)
    )


def test_only_baofoo_has_a_least_gap_between_queries():
    assert (min_gap_s("baofoo"), min_gap_s("gopay")) == (60.0, 0.0)


def test_an_order_is_due_exactly_first_after_s_after_creation_and_gone_exactly_at_give_up():
    config = ReconcileConfig(first_after_s=60, intervals_s=(60,), give_up_after_s=600)
    assert not is_due(CREATED, CREATED + timedelta(seconds=59.999), config)
    assert is_due(CREATED, CREATED + timedelta(seconds=60), config)
    assert is_due(CREATED, CREATED + timedelta(seconds=599.999), config)
    assert not is_due(CREATED, CREATED + timedelta(seconds=600), config)
    assert (gave_up(599.999, config), gave_up(600, config)) == (False, True)


def test_the_last_interval_repeats_from_the_last_point_reached():
    config = ReconcileConfig(first_after_s=10, intervals_s=(20, 30))
    points = [next_offset_s(age, config) for age in (0, 10, 30, 60, 89.5, 90, 119)]
    assert points == [10, 30, 60, 90, 90, 120, 120]


def test_a_claim_is_never_due_again_at_once():
    tight = ReconcileConfig(first_after_s=1, intervals_s=(1,))
    now = CREATED + timedelta(seconds=1.9999)
    assert next_query_at(created_at=CREATED, now=now, provider="gopay", config=tight) >= (
        now + timedelta(seconds=1)
    )


@pytest.mark.parametrize(
    ("age_s", "due"), [(0, False), (299, False), (300, True), (86399, True), (86400, False)]
)
def test_an_order_is_due_from_first_after_until_give_up(age_s, due):
    now = CREATED + timedelta(seconds=age_s)
    assert is_due(CREATED, now, CONFIG) is due
    assert gave_up(age_s, CONFIG) is (age_s >= 86400)


def test_serve_polls_at_least_as_often_as_the_shortest_schedule_step():
    assert poll_interval_s(CONFIG) == 5.0
    assert poll_interval_s(ReconcileConfig(first_after_s=2, intervals_s=(3,))) == 2.0
    assert poll_interval_s(ReconcileConfig(first_after_s=60, intervals_s=(60, 3, 60))) == 3.0


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("15m", 900), ("3h", 10800), ("2d", 172800), ("0s", 0)]
)
def test_durations_are_a_number_and_a_unit(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "15", "m", "1.5h", "-3h", "3 h", "3H", "2w", "1e3s"])
def test_anything_else_is_not_a_duration(text):
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("pending", "age_s", "what"),
    [
        (True, 299.9, LATER),  # not old enough: back to its first query time
        (True, 300, ASK),  # its first point reached
        (True, 86399.9, ASK),
        (True, 86400, RETIRE),  # past give_up_after_s: never asked again
        (False, 300, RETIRE),  # paid (or failed, closed) meanwhile
        (False, 10, RETIRE),
    ],
)
def test_what_a_pass_does_with_a_row_it_meets(pending, age_s, what):
    now = CREATED + timedelta(seconds=age_s)
    assert disposition(pending=pending, created_at=CREATED, now=now, config=CONFIG) == what


def test_the_first_query_is_first_after_s_after_creation():
    assert first_query_at(CREATED, CONFIG) == CREATED + timedelta(seconds=300)
