"""Baofoo order queries, pure: queryability, the request form, and every kind of reply."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from receiver.config import BaofooConfig, BaofooMerchant
from receiver.core.notification import Outcome, Status
from receiver.gateways import OrderRef, QueryAnswer, QueryResult
from receiver.gateways.asking import HttpReply
from receiver.gateways.baofoo.query import BaofooQuerier, Terminal, read_reply
from tests.support.queries import MD5_KEY, MEMBER, SUCC_TIME, TERMINAL, TRANS, signed_reply


def _order(trans_id: str = TRANS, member_id: str = MEMBER) -> OrderRef:
    return OrderRef(
        order_id=1,
        provider="baofoo",
        merchant_id=member_id,
        out_trade_no=trans_id,
        amount_minor=12345,
        currency="CNY",
        channel=None,
    )


def _read(body: bytes, *, status: int = 200, order: OrderRef | None = None) -> QueryAnswer:
    reply = HttpReply(status=status, headers={}, body=body, content_type="text/plain", charset=None)
    return read_reply(reply, order=order or _order(), terminal=Terminal(TERMINAL, MD5_KEY))


def _querier(*merchants: BaofooMerchant) -> BaofooQuerier:
    return BaofooQuerier(
        query_url="http://gw.example/query",
        merchants=merchants or (BaofooMerchant(MEMBER, TERMINAL, MD5_KEY),),
    )


# --- verified replies ----------------------------------------------------------------------------


def test_a_paid_reply_is_a_notification_of_exactly_its_signed_fields() -> None:
    body = signed_reply("Y")
    answer = _read(body)
    assert (answer.result, answer.reason) == (QueryResult.PAID, "CheckResult=Y")
    n = answer.notification
    assert n is not None
    assert (n.provider, n.merchant_id, n.out_trade_no) == ("baofoo", MEMBER, TRANS)
    assert (n.target, n.paid_amount_minor, n.order_amount_minor) == (Status.PAID, 12345, None)
    assert n.paid_at == datetime(2014, 10, 29, 10, 45, 3, tzinfo=UTC)
    assert n.detail == "CheckResult=Y"
    assert answer.inbound is not None
    assert (answer.inbound.provider, answer.inbound.body) == ("baofoo", body)
    assert answer.rejected is None


@pytest.mark.parametrize(
    ("check", "result", "target"),
    [("F", QueryResult.FAILED, Status.FAILED), ("P", QueryResult.PENDING, None)],
)
def test_failed_and_processing_replies_ask_for_failed_and_nothing(
    check: str, result: QueryResult, target: Status | None
) -> None:
    answer = _read(signed_reply(check, money="0"))
    assert answer.result is result
    assert answer.notification is not None and answer.notification.target is target
    assert answer.notification.detail == f"CheckResult={check}"


def test_a_no_such_order_reply_is_not_found_with_nothing_to_store() -> None:
    answer = _read(signed_reply("N", money="0"))
    assert answer == QueryAnswer(result=QueryResult.NOT_FOUND, reason="CheckResult=N")


def test_a_signature_in_upper_case_or_followed_by_a_line_break_verifies() -> None:
    *parts, sign = signed_reply("Y").decode().split("|")
    body = "|".join([*parts, sign.upper()]).encode() + b"\r\n"
    assert _read(body).result is QueryResult.PAID


# --- refused replies (stored against our order) --------------------------------------------------


def _refusal(answer: QueryAnswer) -> tuple[QueryResult, Outcome, str]:
    assert answer.rejected is not None and answer.inbound is not None
    assert (answer.rejected.merchant_id, answer.rejected.out_trade_no) == (MEMBER, TRANS)
    assert answer.notification is None
    return answer.result, answer.rejected.outcome, answer.rejected.reason


def test_a_signed_check_result_other_than_y_f_p_or_n_is_refused_as_malformed() -> None:
    assert _refusal(_read(signed_reply("S"))) == (
        QueryResult.REFUSED,
        Outcome.MALFORMED,
        "CheckResult must be Y, F, P or N",
    )


@pytest.mark.parametrize(
    "body",
    [
        signed_reply("Y", md5_key="another key"),
        signed_reply("Y").replace(b"|12345|", b"|12346|"),  # the amount changed after signing
        signed_reply("Y")[:-1] + "é".encode(),  # a non-ASCII signature is no signature
    ],
)
def test_a_reply_whose_md5_does_not_match_is_refused_as_bad_signature(body: bytes) -> None:
    assert _refusal(_read(body)) == (
        QueryResult.REFUSED,
        Outcome.BAD_SIGNATURE,
        "reply Md5Sign does not match",
    )


@pytest.mark.parametrize(
    "body", [signed_reply("Y", trans_id="2014010101010102"), signed_reply("Y", terminal_id="2")]
)
def test_a_genuine_reply_about_another_order_or_terminal_is_refused(body: bytes) -> None:
    assert _refusal(_read(body)) == (
        QueryResult.REFUSED,
        Outcome.MALFORMED,
        "reply is about another order",
    )


# --- unusable replies (errors: nothing stored) ---------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, signed_reply("Y")),  # a signed body under an error status is not believed
        (200, signed_reply("Y").replace(f"|{SUCC_TIME}".encode(), b"")),  # SuccTime left out
        (200, signed_reply("Y") + b"|extra"),
        (200, b"\xff\xfe" + signed_reply("Y")),
    ],
    ids=["status-500", "six-parts", "eight-parts", "not-utf8"],
)
def test_a_reply_that_is_not_the_seven_part_text_is_an_error(status: int, body: bytes) -> None:
    answer = _read(body, status=status)
    assert answer == QueryAnswer(
        result=QueryResult.ERROR,
        reason=f"reply is not MemberID|...|Md5Sign text (HTTP {status})",
    )


# --- the asking side -----------------------------------------------------------------------------


def test_an_unknown_member_is_not_queryable_and_a_single_terminal_is() -> None:
    querier = _querier()
    assert querier.not_queryable(_order(member_id="999")) == (
        "Baofoo MemberID 999 is not configured"
    )
    assert querier.not_queryable(_order()) is None


def test_from_config_queries_the_configured_url_with_the_configured_terminal() -> None:
    merchant = BaofooMerchant(MEMBER, TERMINAL, MD5_KEY)
    querier = BaofooQuerier.from_config(
        BaofooConfig(merchants=(merchant,), query_url="http://gw.example/query")
    )
    assert querier.url == "http://gw.example/query"
    assert querier.not_queryable(_order()) is None
    sign = hashlib.md5(f"{MEMBER}|{TERMINAL}|{TRANS}|{MD5_KEY}".encode()).hexdigest()
    assert querier.build_request(_order()) == (
        f"MemberID={MEMBER}&TerminalID={TERMINAL}&TransID={TRANS}&MD5Sign={sign}".encode()
    )
