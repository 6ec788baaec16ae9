"""The reconciler's schedule (pure): when an order is due for a query, from its age alone.

First query `first_after_s` after creation, then after each of `intervals_s`, the last
repeating, until the order is older than `give_up_after_s`. A Baofoo order is asked at most
once a minute; any claim moves the next query at least `CLAIM_AHEAD_S` ahead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timedelta

from receiver.config import ReconcileConfig

#: Least time between two queries of one order, per provider (Baofoo: once a minute).
MIN_GAP_S: Mapping[str, float] = {"baofoo": 60.0}
CLAIM_AHEAD_S = 1.0  # a claim moves next_at at least this far ahead: never due again at once
POLL_S = 5.0  # serve's reconciler looks for due orders at least this often


def min_gap_s(provider: str) -> float:
    """The least time between two queries of one order of `provider`."""
    return MIN_GAP_S.get(provider, 0.0)


def next_offset_s(age_s: float, config: ReconcileConfig) -> float:
    """The first scheduled query time after `age_s`, in seconds since the order's creation."""
    point = float(config.first_after_s)
    if point > age_s:
        return point
    for interval in config.intervals_s:
        point += interval
        if point > age_s:
            return point
    last = config.intervals_s[-1]
    return point + last * (math.floor((age_s - point) / last) + 1)


def next_query_at(
    *, created_at: datetime, now: datetime, provider: str, config: ReconcileConfig
) -> datetime:
    """When an order asked at `now` is next due: its next schedule point, the gap respected."""
    age_s = (now - created_at).total_seconds()
    scheduled = created_at + timedelta(seconds=next_offset_s(age_s, config))
    return max(scheduled, now + timedelta(seconds=max(min_gap_s(provider), CLAIM_AHEAD_S)))


def is_due(created_at: datetime, now: datetime, config: ReconcileConfig) -> bool:
    """True when an order this old is inside the query window (its first point reached)."""
    age_s = (now - created_at).total_seconds()
    return config.first_after_s <= age_s and not gave_up(age_s, config)


def gave_up(age_s: float, config: ReconcileConfig) -> bool:
    """True when an order this old is no longer queried."""
    return age_s >= config.give_up_after_s


def poll_interval_s(config: ReconcileConfig) -> float:
    """How often serve looks for due orders: never slower than the shortest schedule step."""
    return float(min(POLL_S, config.first_after_s, *config.intervals_s))


#: What a pass does with an `order_queries` row it meets (see `disposition`).
ASK, RETIRE, LATER = "ask", "retire", "later"


def disposition(
    *, pending: bool, created_at: datetime, now: datetime, config: ReconcileConfig
) -> str:
    """ASK about an order due now; RETIRE one no longer pending or past the window (never due
    again); LATER one not old enough yet (its row was scheduled under another configuration)."""
    age_s = (now - created_at).total_seconds()
    if not pending or gave_up(age_s, config):
        return RETIRE
    return ASK if config.first_after_s <= age_s else LATER


def first_query_at(created_at: datetime, config: ReconcileConfig) -> datetime:
    """When an order is first due."""
    return created_at + timedelta(seconds=config.first_after_s)
