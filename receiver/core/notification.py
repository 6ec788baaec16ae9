"""Gateway-neutral types: what a verified notification says, and what became of it.

Everything here is pure: the status and amount rules are functions on plain values, tested
without a database.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from types import MappingProxyType
from typing import NamedTuple

from multidict import CIMultiDict, CIMultiDictProxy


class Status(enum.StrEnum):
    """An order's status as stored in `orders.status`."""

    PENDING = "pending"
    PAID = "paid"
    FAILED = "failed"
    CLOSED = "closed"


# Status by its text: an enum's call by value walks Enum.__new__ (about 0.4 us), a dict does not.
STATUSES: dict[str, Status] = {status.value: status for status in Status}


class Outcome(enum.StrEnum):
    """What became of one notification; stored in `notifications.outcome`."""

    APPLIED = "applied"  #: the order's status moved
    APPLIED_LATE = "applied_late"  #: paid after failed or closed; the order needs review
    DUPLICATE = "duplicate"  #: the order already has the status the gateway asks for
    STALE = "stale"  #: would move an order with a final word (paid) backwards; ignored
    NOOP = "noop"  #: the gateway says the payment is still awaited
    MALFORMED = "malformed"  #: unparsable body, missing or badly formatted field
    BAD_SIGNATURE = "bad_signature"  #: signature missing or wrong
    EXPIRED = "expired"  #: timestamp outside the accepted window
    REPLAYED = "replayed"  #: nonce already seen within that window
    IP_DENIED = "ip_denied"  #: source address not in the gateway's allowed_ips
    UNKNOWN_MERCHANT = "unknown_merchant"  #: the merchant is not configured
    UNKNOWN_ORDER = "unknown_order"  #: no such order (yet): the gateway will retry
    AMOUNT_MISMATCH = "amount_mismatch"  #: the amount does not match the order's; order untouched
    CURRENCY_MISMATCH = "currency_mismatch"  #: the currency is not the order's; order untouched
    #: a payout (disbursement) notification at the payment endpoint; order untouched
    CHANNEL_MISMATCH = "channel_mismatch"

    @property
    def accepted(self) -> bool:
        """True when the gateway should stop retrying."""
        return self in _ACCEPTED


_ACCEPTED = frozenset(
    {Outcome.APPLIED, Outcome.APPLIED_LATE, Outcome.DUPLICATE, Outcome.STALE, Outcome.NOOP}
)


# Inbound and Notification are named tuples rather than frozen dataclasses: as immutable, and
# built in a third of the time (a frozen dataclass sets each field through object.__setattr__).
class Inbound(NamedTuple):
    """One HTTP notification exactly as received, before anything is trusted."""

    provider: str
    body: bytes
    headers: Mapping[str, str]
    content_type: str
    charset: str | None
    remote_addr: str | None


CONTENT_TYPE_HEADER = "content-type"  # kept with every stored notification, for a replay


def named_headers(headers: Mapping[str, str], names: Iterable[str]) -> dict[str, object]:
    """The named headers present, matched case-insensitively: lower-case names, verbatim values.
    A header sent more than once counts with its last value."""
    if isinstance(headers, CIMultiDictProxy | CIMultiDict):
        # aiohttp's request headers: looked up case-insensitively, rather than lower-casing every
        # header. Its parser admits only ASCII token names, for which that match and lower() agree.
        return {name: values[-1] for name in names if (values := headers.getall(name, None))}
    lowered = {str(k).lower(): v for k, v in headers.items()}
    return {name: lowered[name] for name in names if name in lowered}


def kept_headers(headers: Mapping[str, str], names: Iterable[str]) -> dict[str, str]:
    """The named headers present and storable as text (see `named_headers`)."""
    return {
        name: value
        for name, value in named_headers(headers, names).items()
        if isinstance(value, str) and _storable_text(value)
    }


def _storable_text(value: str) -> bool:
    # jsonb holds neither NUL nor the lone surrogates that undecodable header bytes become.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in value


class Notification(NamedTuple):
    """A verified notification in gateway-neutral terms.

    `target` is None when the gateway only says the payment is still awaited.
    `order_amount_minor` is the order's amount as the gateway states it (None when it does not);
    `paid_amount_minor` is what the gateway says was paid. `underpay_channels` names order
    channels for which paying less than the order amount is legitimate (prepaid cards).
    `signed_headers` are the headers kept with the raw notification. `payout` is True when the
    gateway says the money went out (a disbursement): such a notification never moves a
    payment order.
    """

    provider: str
    merchant_id: str
    out_trade_no: str
    target: Status | None
    paid_amount_minor: int | None
    order_amount_minor: int | None = None
    currency: str | None = None
    provider_trade_no: str | None = None
    paid_at: datetime | None = None
    underpay_channels: frozenset[str] = frozenset()
    nonce: str | None = None
    signed_headers: Mapping[str, str] = MappingProxyType({})
    payout: bool = False
    detail: str = ""
    #: False when the gateway did not say what was paid (GoPay without `pay_amount`, as its
    #: order query always is): `paid_amount_minor` is then the order amount it states.
    paid_amount_stated: bool = True


@dataclass(frozen=True, slots=True)
class Transition:
    """The decision for one notification against one order's current status."""

    outcome: Outcome
    new_status: Status | None  # None: nothing to write


def decide_transition(current: Status, target: Status | None) -> Transition:
    """Apply SPEC's status rules: forward once, late money accepted, paid is final."""
    if target is None:
        return Transition(Outcome.NOOP, None)
    if target is current:
        return Transition(Outcome.DUPLICATE, None)
    if current is Status.PENDING:
        return Transition(Outcome.APPLIED, target)
    if target is Status.PAID:
        return Transition(Outcome.APPLIED_LATE, target)
    # paid -> anything, failed <-> closed: the order already has a final word.
    return Transition(Outcome.STALE, None)


def check_amount(
    n: Notification, *, amount_minor: int, currency: str, channel: str | None
) -> Outcome | None:
    """Compare what the gateway says with the merchant's order; None when they agree."""
    if n.currency is not None and n.currency != currency:
        return Outcome.CURRENCY_MISMATCH
    if n.order_amount_minor is not None and n.order_amount_minor != amount_minor:
        return Outcome.AMOUNT_MISMATCH
    if n.target is not Status.PAID or n.paid_amount_minor is None:
        return None
    paid = n.paid_amount_minor
    if channel is not None and channel in n.underpay_channels:
        return None if 0 < paid <= amount_minor else Outcome.AMOUNT_MISMATCH
    return None if paid == amount_minor else Outcome.AMOUNT_MISMATCH


class ReviewReason(enum.StrEnum):
    """Why a person must look at an order; stored in `reviews.reason`."""

    APPLIED_LATE = "applied_late"  #: paid after failed or closed
    AMOUNT_MISMATCH = "amount_mismatch"  #: verified money that does not match the order
    CURRENCY_MISMATCH = "currency_mismatch"  #: verified money in another currency
    PAID_AMOUNT_DIFFERS = "paid_amount_differs"  #: a paid order reported paid with other money


def held_back(n: Notification, *, held: bool) -> bool:
    """True when `n` says paid for an order whose money is held for review.

    Nothing is credited that a person has not seen: once verified money that did not match is
    held, no report settles the order (GoPay's order query, which never carries `pay_amount`,
    restates the order amount) until the person has resolved the review.
    """
    return held and n.target is Status.PAID


def paid_amount_differs(n: Notification, *, recorded_minor: int | None) -> bool:
    """True when `n` states a paid amount other than the one recorded on the (paid) order."""
    if recorded_minor is None or n.target is not Status.PAID or not n.paid_amount_stated:
        return False
    return n.paid_amount_minor != recorded_minor


def money(minor: int | None, currency: str | None) -> str:
    """An amount in words for a person: `50.00 CNY` (minor units as a decimal)."""
    if minor is None:
        return "no amount"
    sign = "-" if minor < 0 else ""
    whole, cents = divmod(abs(minor), 100)
    return f"{sign}{whole}.{cents:02d} {currency or ''}".rstrip()


_MONEY = re.compile(r"^(0|[1-9][0-9]{0,14})(?:\.([0-9]{1,3}))?$")


def parse_money(text: str) -> int:
    """A decimal amount ("100.000", "1.66") in minor units (fen, paise); raise ValueError.

    Up to three decimals are accepted because GoPay writes three, but the value must be a
    whole number of minor units: "1.665" is refused rather than rounded.
    """
    m = _MONEY.match(text)
    if m is None:
        raise ValueError("not a decimal amount")
    minor = Decimal(text) * 100
    if minor != minor.to_integral_value():
        raise ValueError("not a whole number of minor units")
    return int(minor)


MAX_IDENTIFIER_LENGTH = 128


def is_identifier(text: str) -> bool:
    """True for an order or merchant number we can store and log: short, printable, no NUL."""
    return 0 < len(text) <= MAX_IDENTIFIER_LENGTH and text.isprintable()
