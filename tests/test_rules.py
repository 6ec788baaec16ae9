"""Pure rules: status transitions, amount checks, money parsing, log redaction."""

from __future__ import annotations

import json

import pytest
import structlog
from multidict import CIMultiDict, CIMultiDictProxy

from receiver.core.notification import (
    Notification,
    Outcome,
    Status,
    check_amount,
    decide_transition,
    is_identifier,
    kept_headers,
    parse_money,
)
from receiver.logging import configure_logging, mask_account_numbers

P, F, C, W = Status.PAID, Status.FAILED, Status.CLOSED, Status.PENDING


@pytest.mark.parametrize(
    ("current", "target", "outcome", "new"),
    [
        (W, P, Outcome.APPLIED, P),
        (W, F, Outcome.APPLIED, F),
        (W, C, Outcome.APPLIED, C),
        (F, P, Outcome.APPLIED_LATE, P),
        (C, P, Outcome.APPLIED_LATE, P),
        (P, P, Outcome.DUPLICATE, None),
        (F, F, Outcome.DUPLICATE, None),
        (P, F, Outcome.STALE, None),
        (P, C, Outcome.STALE, None),
        (F, C, Outcome.STALE, None),
        (C, F, Outcome.STALE, None),
        (W, None, Outcome.NOOP, None),
        (P, None, Outcome.NOOP, None),
    ],
)
def test_status_rules(current, target, outcome, new):
    t = decide_transition(current, target)
    assert (t.outcome, t.new_status) == (outcome, new)


def test_paid_is_final_whatever_arrives():
    for target in (W, F, C, None):
        assert decide_transition(P, target).new_status is None


def note(**kw) -> Notification:
    base = {
        "provider": "x",
        "merchant_id": "m",
        "out_trade_no": "o",
        "target": P,
        "paid_amount_minor": 100,
        "currency": "CNY",
    }
    return Notification(**(base | kw))


@pytest.mark.parametrize(
    ("n", "channel", "expected"),
    [
        (note(), None, None),
        (note(paid_amount_minor=99), None, Outcome.AMOUNT_MISMATCH),
        (note(paid_amount_minor=101), None, Outcome.AMOUNT_MISMATCH),
        (note(order_amount_minor=90), None, Outcome.AMOUNT_MISMATCH),
        (note(currency="INR"), None, Outcome.CURRENCY_MISMATCH),
        (note(currency=None), None, None),
        (note(paid_amount_minor=80, underpay_channels=frozenset({"103"})), "103", None),
        (
            note(paid_amount_minor=0, underpay_channels=frozenset({"103"})),
            "103",
            Outcome.AMOUNT_MISMATCH,
        ),
        (
            note(paid_amount_minor=101, underpay_channels=frozenset({"103"})),
            "103",
            Outcome.AMOUNT_MISMATCH,
        ),
        (
            note(paid_amount_minor=80, underpay_channels=frozenset({"103"})),
            "1001",
            Outcome.AMOUNT_MISMATCH,
        ),
        (note(target=F, paid_amount_minor=0), None, None),
        (note(paid_amount_minor=100, underpay_channels=frozenset({"103"})), "103", None),
        (note(paid_amount_minor=1, underpay_channels=frozenset({"103"})), "103", None),
        (note(paid_amount_minor=None), None, None),
        (note(order_amount_minor=100, paid_amount_minor=100), None, None),
        (note(target=C, paid_amount_minor=5), None, None),
        (note(target=None, paid_amount_minor=5), None, None),
    ],
)
def test_amount_rules(n, channel, expected):
    assert check_amount(n, amount_minor=100, currency="CNY", channel=channel) is expected


@pytest.mark.parametrize(
    ("text", "minor"),
    [("100.00", 10000), ("100.000", 10000), ("1.66", 166), ("1.660", 166), ("0.01", 1), ("7", 700)],
)
def test_money_parses_to_minor_units(text, minor):
    assert parse_money(text) == minor


@pytest.mark.parametrize(
    "text", ["1.665", "1.001", "-1", "1e3", "NaN", "", " 1", "1.", "01.00", "1.0000"]
)
def test_money_refuses_what_is_not_whole_minor_units(text):
    with pytest.raises(ValueError):
        parse_money(text)


def test_account_numbers_are_masked_to_last_four():
    assert mask_account_numbers("acct 6228480415647314871 ok") == "acct ***************4871 ok"
    assert mask_account_numbers("order 12345678") == "order 12345678"


def test_json_log_masks_accounts_and_drops_secrets(capsys):
    configure_logging(fmt="json", level="info", cache=False)
    try:
        log = structlog.get_logger()
        log.info("probe", reason="to 6228480415647314871", signature="c2VjcmV0", md5_key="abcdefg")
        line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    finally:
        structlog.reset_defaults()
    assert line["reason"] == "to ***************4871"
    assert line["signature"] == line["md5_key"] == "[redacted]"
    assert {"event", "level", "timestamp"} <= line.keys() and line["timestamp"].endswith("Z")


def test_kept_headers_are_the_named_ones_present_and_storable_verbatim():
    headers = {
        "Content-Type": "application/json; charset=UTF-8",
        "X-CA-NONCESTR": " N1 ",
        "x-ca-timestamp": "1.5E+12\x00",  # jsonb cannot hold NUL
        "X-Ca-Signature": "ab\udcffc",  # undecodable header bytes become lone surrogates
        "Other": "x",
    }
    names = ["content-type", "x-ca-noncestr", "x-ca-timestamp", "x-ca-signature", "absent"]
    assert kept_headers(headers, names) == {
        "content-type": "application/json; charset=UTF-8",
        "x-ca-noncestr": " N1 ",
    }


def test_kept_headers_of_a_request_match_names_as_a_plain_mapping_does():
    items = [
        ("Content-Type", "text/plain"),
        ("X-CA-NONCESTR", "first"),
        ("X-Ca-Noncestr", "second"),
        ("x-ca-noncestr", "last"),  # sent thrice: the last one counts
        ("X-Ca-Signature", "ab\udcffc"),
        ("Other", "x"),
    ]
    names = ["content-type", "x-ca-noncestr", "x-ca-signature", "absent"]
    expected = {"content-type": "text/plain", "x-ca-noncestr": "last"}
    assert kept_headers(dict(items), names) == expected
    assert kept_headers(CIMultiDictProxy(CIMultiDict(items)), names) == expected
    assert kept_headers(CIMultiDict(items), names) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", False),
        ("A", True),
        ("A" * 128, True),
        ("A" * 129, False),
        ("订单-1", True),
        ("A\tB", False),
        ("A\x00", False),
        ("\x00", False),
    ],
)
def test_identifiers_are_1_to_128_printable_characters(text, expected):
    assert is_identifier(text) is expected


@pytest.mark.parametrize(
    ("text", "message"),
    [("1.2.3", "not a decimal amount"), ("1.665", "not a whole number of minor units")],
)
def test_money_errors_say_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        parse_money(text)
