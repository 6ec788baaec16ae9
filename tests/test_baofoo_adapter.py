"""Unit tests of the Baofoo adapter: pure, no server, no database."""

from __future__ import annotations

import ipaddress
import re
import time
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from receiver.config import BaofooConfig, BaofooMerchant
from receiver.core.notification import Inbound, Notification, Outcome, Status
from receiver.errors import Rejected
from receiver.gateways import Gateway
from receiver.gateways.baofoo import (
    PREPAID_CARD_PAY_IDS,
    SIGNED_FIELDS,
    BaofooGateway,
    baofoo_signature,
    parse_form,
    parse_succ_time,
    query_reply_signature,
)
from receiver.http.replies import Refusal, Reply, reply
from tests.support.baofoo_signer import (
    MEMBER_ID,
    TERMINAL_ID,
    TEST_MD5_KEY,
    baofoo_fields,
    encode_form,
    sign_baofoo,
)

FORM = "application/x-www-form-urlencoded"
SECRET = "k3y-Secret-Zz"  # distinctive, so a leak into a message would be found
REQUIRED = ("MemberID", "TerminalID", "TransID", "Result", "ResultDesc", "FactMoney", "SuccTime")
ACCEPTED = [o for o in Outcome if o.accepted]
REFUSED = [o for o in Outcome if not o.accepted]
# Text a form can carry in UTF-8: anything but lone surrogates.
form_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)


def gateway(*pairs: tuple[str, str], key: str = TEST_MD5_KEY) -> BaofooGateway:
    pairs = pairs or ((MEMBER_ID, TERMINAL_ID),)
    merchants = [BaofooMerchant(member_id=m, terminal_id=t, md5_key=key) for m, t in pairs]
    return BaofooGateway(merchants)


def inbound(body: bytes, *, charset: str | None = "utf-8", content_type: str = FORM) -> Inbound:
    return Inbound(
        provider="baofoo",
        body=body,
        headers={},
        content_type=content_type,
        charset=charset,
        remote_addr="127.0.0.1",
    )


def signed_body(charset: str = "utf-8", *, sign_encoding: str | None = None, **kw: str) -> bytes:
    fields = sign_baofoo(baofoo_fields(**kw), TEST_MD5_KEY, encoding=sign_encoding or charset)
    return encode_form(fields, charset=charset)


def parse(body: bytes, *, charset: str | None = "utf-8", content_type: str = FORM) -> Notification:
    return gateway().parse(inbound(body, charset=charset, content_type=content_type))


def refused(body: bytes, *, charset: str | None = "utf-8", content_type: str = FORM) -> Rejected:
    with pytest.raises(Rejected) as info:
        parse(body, charset=charset, content_type=content_type)
    return info.value


# --- signatures -----------------------------------------------------------------------------


def test_notification_signature_matches_protocol_vector() -> None:
    fields = baofoo_fields(TransID="20140101120000001", SuccTime="20140101120130")
    assert baofoo_signature(fields, "abcdefg") == "1aaa1c202b0df82faefcbe29d792835c"


def test_missing_field_signs_as_empty() -> None:
    fields = baofoo_fields()
    del fields["AdditionalInfo"]
    assert baofoo_signature(fields, "abcdefg") == "1aaa1c202b0df82faefcbe29d792835c"


def test_query_reply_signature_matches_seed_vector() -> None:
    line = "100000178|10000001|2014010101010101|N|0|20141029184503|b4d6a91f6af4ce07c87420762d73d0e0"
    *parts, signature = line.split("|")
    assert query_reply_signature(parts, "abcdefg") == signature


def test_query_reply_signature_needs_six_parts() -> None:
    with pytest.raises(ValueError, match=r"^an order-query reply has six signed parts$"):
        query_reply_signature(["100000178", "10000001"], "abcdefg")


def test_protocol_vector_notification_is_accepted_as_paid() -> None:
    n = parse(signed_body())
    assert n == Notification(
        provider="baofoo",
        merchant_id="100000178",
        out_trade_no="20140101120000001",
        target=Status.PAID,
        paid_amount_minor=100,
        order_amount_minor=None,
        currency="CNY",
        provider_trade_no=None,
        paid_at=datetime(2014, 1, 1, 4, 1, 30, tzinfo=UTC),
        underpay_channels=PREPAID_CARD_PAY_IDS,
        nonce=None,
        signed_headers={},
        detail="",
    )


def test_upper_case_signature_is_accepted() -> None:
    fields = sign_baofoo(baofoo_fields(), TEST_MD5_KEY)
    fields["Md5Sign"] = fields["Md5Sign"].upper()
    assert parse(encode_form(fields)).target is Status.PAID


def test_wrong_key_is_bad_signature() -> None:
    fields = sign_baofoo(baofoo_fields(), "not-the-key")
    rejected = refused(encode_form(fields))
    assert rejected.outcome is Outcome.BAD_SIGNATURE
    assert (rejected.merchant_id, rejected.out_trade_no) == (MEMBER_ID, "20140101120000001")


@pytest.mark.parametrize(
    "md5sign", ["", "abc", "g" * 32, "a" * 31, "a" * 33, "\uff41" * 32, "\u0663" * 32]
)
def test_malformed_md5sign_is_bad_signature(md5sign: str) -> None:
    fields = {**baofoo_fields(), "Md5Sign": md5sign}
    assert refused(encode_form(fields)).outcome is Outcome.BAD_SIGNATURE


def test_signature_is_checked_before_business_fields() -> None:
    fields = sign_baofoo(baofoo_fields(), "not-the-key")
    fields["FactMoney"] = "1.00"
    assert refused(encode_form(fields)).outcome is Outcome.BAD_SIGNATURE


# --- charsets -------------------------------------------------------------------------------


@pytest.mark.parametrize("charset", ["gbk", "GBK", "gb18030", "gb2312", "GB2312"])
def test_chinese_additional_info_verifies_in_posted_charset(charset: str) -> None:
    body = signed_body(charset.lower(), AdditionalInfo="宝付 充值卡")
    assert "宝付".encode() not in body  # really posted in a GB encoding
    n = parse(body, charset=charset)
    assert n.target is Status.PAID
    assert n.detail == ""


def test_gbk_post_signed_over_utf8_text_verifies_and_says_so() -> None:
    body = signed_body("gbk", sign_encoding="utf-8", AdditionalInfo="宝付订单")
    n = parse(body, charset="gbk")
    assert n.target is Status.PAID
    assert "UTF-8" in n.detail
    assert "gbk" in n.detail


def test_utf8_post_signed_over_gbk_text_is_bad_signature() -> None:
    body = signed_body("utf-8", sign_encoding="gbk", AdditionalInfo="宝付订单")
    assert refused(body).outcome is Outcome.BAD_SIGNATURE


@pytest.mark.parametrize("charset", [None, "utf-8", "UTF-8", "utf8", "UTF8", "utf_8", '"utf-8"'])
def test_utf8_charset_labels_are_accepted(charset: str | None) -> None:
    body = signed_body(AdditionalInfo="宝付")
    assert parse(body, charset=charset).target is Status.PAID


@pytest.mark.parametrize("charset", ["latin-1", "iso-8859-1", "utf-16", "ascii", "big5", "x"])
def test_other_charsets_are_415(charset: str) -> None:
    rejected = refused(signed_body(), charset=charset)
    assert (rejected.outcome, rejected.media_type) == (Outcome.MALFORMED, True)


@pytest.mark.parametrize(
    "content_type", ["application/json", "text/plain", "multipart/form-data", ""]
)
def test_other_content_types_are_415(content_type: str) -> None:
    rejected = refused(signed_body(), content_type=content_type)
    assert (rejected.outcome, rejected.media_type) == (Outcome.MALFORMED, True)


def test_content_type_is_case_insensitive_and_may_carry_parameters() -> None:
    body = signed_body()
    assert parse(body, content_type="Application/X-WWW-Form-URLEncoded; charset=utf-8").target


def test_undecodable_form_is_malformed() -> None:
    body = signed_body() + b"&AdditionalInfo=%FF%FE"
    rejected = refused(body)
    assert rejected.outcome is Outcome.MALFORMED
    assert rejected.media_type is False


@pytest.mark.parametrize(
    ("body", "charset", "content_type", "outcome", "reason"),
    [
        (b"", "utf-8", "text/plain", Outcome.MALFORMED, f"content type must be {FORM}"),
        (b"", "latin-1", FORM, Outcome.MALFORMED, "charset must be UTF-8, GBK or GB18030"),
        (b"TransID=%FF", "utf-8", FORM, Outcome.MALFORMED, "form is not valid utf-8"),
        (b"TransID=%FF%FF", "gb18030", FORM, Outcome.MALFORMED, "form is not valid gb18030"),
        (
            b"MemberID=1&Result=1&ResultDesc=01",
            "utf-8",
            FORM,
            Outcome.MALFORMED,
            "missing field(s): Md5Sign, TerminalID, TransID",
        ),
    ],
)
def test_refusals_before_the_signature_say_why(
    body: bytes, charset: str, content_type: str, outcome: Outcome, reason: str
) -> None:
    rejected = refused(body, charset=charset, content_type=content_type)
    assert (rejected.outcome, rejected.reason) == (outcome, reason)


@pytest.mark.parametrize(
    ("changes", "outcome", "reason"),
    [
        ({"Md5Sign": "g" * 32}, Outcome.BAD_SIGNATURE, "Md5Sign is not 32 hex digits"),
        ({"Md5Sign": "0" * 32}, Outcome.BAD_SIGNATURE, "Md5Sign does not match"),
        ({"TerminalID": "9"}, Outcome.UNKNOWN_MERCHANT, "MemberID/TerminalID not configured"),
    ],
)
def test_signature_and_merchant_refusals_say_why(
    changes: dict[str, str], outcome: Outcome, reason: str
) -> None:
    fields = {**sign_baofoo(baofoo_fields(), TEST_MD5_KEY), **changes}
    rejected = refused(encode_form(fields))
    assert (rejected.outcome, rejected.reason) == (outcome, reason)
    assert (rejected.merchant_id, rejected.out_trade_no) == (MEMBER_ID, "20140101120000001")


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"TransID": ""}, "TransID is empty, too long or not printable"),
        ({"TransID": "T" * 129}, "TransID is empty, too long or not printable"),
        ({"Result": "2"}, "Result/ResultDesc combination not understood"),
        ({"FactMoney": "1.00"}, "FactMoney must be integer fen"),
        ({"SuccTime": "2014"}, "SuccTime must be YYYYMMDDhhmmss"),
    ],
)
def test_business_field_refusals_say_why(changes: dict[str, str], reason: str) -> None:
    rejected = refused(signed_body(**changes))
    assert (rejected.outcome, rejected.reason) == (Outcome.MALFORMED, reason)


def test_content_type_with_several_parameters_is_still_a_form() -> None:
    body = signed_body()
    assert parse(body, content_type=f"{FORM}; charset=utf-8; boundary=x").target is Status.PAID


@pytest.mark.parametrize("charset", ["Xutf-8", 'utf-8X"', "_utf-8"])
def test_charset_labels_are_matched_whole(charset: str) -> None:
    rejected = refused(signed_body(), charset=charset)
    assert (rejected.outcome, rejected.media_type) == (Outcome.MALFORMED, True)


def test_failure_posted_in_gbk_but_signed_over_utf8_explains_both() -> None:
    body = signed_body(
        "gbk", sign_encoding="utf-8", Result="0", ResultDesc="0002", AdditionalInfo="宝付"
    )
    n = parse(body, charset="gbk")
    assert n.detail == (
        "ResultDesc=0002 (订单超时 order timed out); "
        "signature verified over UTF-8 text (form posted as gbk)"
    )


def test_a_key_gbk_cannot_encode_verifies_over_utf8_and_never_waves_a_form_through() -> None:
    key = "k\U0001f600y"  # GBK has no emoji: the GBK candidate cannot even be computed
    gw = gateway(key=key)
    good = encode_form(sign_baofoo(baofoo_fields(), key, encoding="utf-8"), charset="gbk")
    assert gw.parse(inbound(good, charset="gbk")).target is Status.PAID
    forged = encode_form({**baofoo_fields(), "Md5Sign": "0" * 32}, charset="gbk")
    with pytest.raises(Rejected) as info:
        gw.parse(inbound(forged, charset="gbk"))
    assert info.value.outcome is Outcome.BAD_SIGNATURE


# --- form parsing ---------------------------------------------------------------------------


def test_additional_info_with_form_metacharacters_round_trips() -> None:
    info = "a&b=c+d/e f%20g?h#i~|~j"
    body = signed_body(AdditionalInfo=info)
    assert parse_form(body, encoding="utf-8")["AdditionalInfo"] == info
    assert parse(body).target is Status.PAID


def test_an_empty_pair_does_not_end_the_form() -> None:
    fields = sign_baofoo(baofoo_fields(), TEST_MD5_KEY)
    body = b"&&" + encode_form(fields).replace(b"&", b"&&") + b"&"
    assert parse_form(body, encoding="utf-8") == fields
    assert parse(body).target is Status.PAID


def test_a_raw_equals_sign_inside_a_value_belongs_to_the_value() -> None:
    fields = sign_baofoo(baofoo_fields(AdditionalInfo="a=b=c"), TEST_MD5_KEY)
    body = encode_form(fields).replace(b"a%3Db%3Dc", b"a=b=c")
    assert b"AdditionalInfo=a=b=c" in body
    assert parse_form(body, encoding="utf-8")["AdditionalInfo"] == "a=b=c"
    assert parse(body).target is Status.PAID


def test_a_name_without_a_value_is_the_empty_string() -> None:
    assert parse_form(b"AdditionalInfo&TransID=T1", encoding="utf-8") == {
        "AdditionalInfo": "",
        "TransID": "T1",
    }


def test_plus_in_the_raw_form_is_a_space() -> None:
    fields = sign_baofoo(baofoo_fields(AdditionalInfo="a b"), TEST_MD5_KEY)
    body = encode_form(fields)
    assert b"AdditionalInfo=a+b" in body
    assert parse(body).target is Status.PAID


@pytest.mark.parametrize("name", [*SIGNED_FIELDS, "Md5Sign"])
def test_field_given_twice_is_malformed(name: str) -> None:
    fields = sign_baofoo(baofoo_fields(), TEST_MD5_KEY)
    body = encode_form(fields) + b"&" + encode_form({name: fields[name]})
    rejected = refused(body)
    assert rejected.outcome is Outcome.MALFORMED
    assert "twice" in rejected.reason


@pytest.mark.parametrize("name", REQUIRED)
def test_missing_field_of_a_payment_is_malformed_after_verifying(name: str) -> None:
    fields = baofoo_fields()
    del fields[name]  # signed as the empty string, as the gateway would
    rejected = refused(encode_form(sign_baofoo(fields, TEST_MD5_KEY)))
    assert rejected.outcome is Outcome.MALFORMED
    assert name in rejected.reason


def test_missing_md5sign_is_malformed() -> None:
    rejected = refused(encode_form(baofoo_fields()))
    assert (rejected.outcome, rejected.reason) == (Outcome.MALFORMED, "missing field(s): Md5Sign")


@pytest.mark.parametrize("name", [*SIGNED_FIELDS])
def test_signed_field_dropped_after_signing_is_bad_signature_or_malformed(name: str) -> None:
    fields = sign_baofoo(baofoo_fields(AdditionalInfo="note"), TEST_MD5_KEY)
    del fields[name]
    assert refused(encode_form(fields)).outcome in {Outcome.BAD_SIGNATURE, Outcome.MALFORMED}


@pytest.mark.parametrize("absent", [("SuccTime",), ("FactMoney",), ("SuccTime", "FactMoney")])
def test_failure_without_succ_time_or_fact_money_verifies_as_failed(
    absent: tuple[str, ...],
) -> None:
    fields = baofoo_fields(Result="0", ResultDesc="0002")
    for name in absent:
        del fields[name]
    n = parse(encode_form(sign_baofoo(fields, TEST_MD5_KEY)))
    assert (n.target, n.out_trade_no) == (Status.FAILED, fields["TransID"])
    assert (n.paid_at is None) == ("SuccTime" in absent)
    assert (n.paid_amount_minor is None) == ("FactMoney" in absent)


def test_failure_with_empty_fact_money_has_no_amount() -> None:
    n = parse(signed_body(Result="0", ResultDesc="0000", FactMoney="", SuccTime=""))
    assert (n.target, n.paid_amount_minor, n.paid_at) == (Status.FAILED, None, None)


def test_failure_with_a_bad_fact_money_is_malformed() -> None:
    rejected = refused(signed_body(Result="0", ResultDesc="0000", FactMoney="1.00"))
    assert (rejected.outcome, rejected.reason) == (
        Outcome.MALFORMED,
        "FactMoney must be integer fen",
    )


@pytest.mark.parametrize("name", ["MemberID", "TerminalID", "TransID", "Result", "ResultDesc"])
def test_a_failure_still_needs_its_identifying_fields(name: str) -> None:
    fields = baofoo_fields(Result="0", ResultDesc="0002")
    del fields[name]
    rejected = refused(encode_form(sign_baofoo(fields, TEST_MD5_KEY)))
    assert rejected.outcome is Outcome.MALFORMED
    assert name in rejected.reason


def test_missing_fields_still_name_the_order_when_known() -> None:
    rejected = refused(encode_form({"MemberID": MEMBER_ID, "TransID": "T1"}))
    assert (rejected.merchant_id, rejected.out_trade_no) == (MEMBER_ID, "T1")


def test_missing_additional_info_is_empty() -> None:
    fields = sign_baofoo(baofoo_fields(AdditionalInfo=""), TEST_MD5_KEY)
    del fields["AdditionalInfo"]
    assert parse(encode_form(fields)).target is Status.PAID


def test_unknown_fields_are_ignored_even_twice() -> None:
    body = b"Extra=1&" + signed_body() + b"&Extra=2&&Flag"
    assert parse(body).target is Status.PAID


def test_empty_body_is_malformed() -> None:
    assert refused(b"").outcome is Outcome.MALFORMED


# --- status ---------------------------------------------------------------------------------


def test_failure_code_is_explained_in_detail() -> None:
    n = parse(signed_body(Result="0", ResultDesc="0013"))
    assert n.target is Status.FAILED
    assert "ResultDesc=0013" in n.detail
    assert "insufficient balance" in n.detail


def test_unknown_failure_code_is_still_a_failure() -> None:
    n = parse(signed_body(Result="0", ResultDesc="9999"))
    assert (n.target, n.detail) == (Status.FAILED, "ResultDesc=9999 (unknown code)")


@pytest.mark.parametrize(
    ("result", "desc"),
    [("1", "0000"), ("1", ""), ("0", "01"), ("2", "01"), ("", "01"), ("01", "01"), ("0", "0 1")],
)
def test_other_result_combinations_are_malformed(result: str, desc: str) -> None:
    rejected = refused(signed_body(Result=result, ResultDesc=desc))
    assert rejected.outcome is Outcome.MALFORMED


# --- amounts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fen"), [("0", 0), ("1", 1), ("000100", 100), ("9" * 15, 10**15 - 1)]
)
def test_fact_money_is_integer_fen(text: str, fen: int) -> None:
    assert parse(signed_body(FactMoney=text)).paid_amount_minor == fen


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1.00",
        "-1",
        "+1",
        " 1",
        "1 ",
        "1e3",
        "0x10",
        "\uff11\uff10\uff10",
        "\u0661\u0660\u0660",
        "1" * 16,
        "1_000",
    ],
)
def test_bad_fact_money_is_malformed(text: str) -> None:
    assert refused(signed_body(FactMoney=text)).outcome is Outcome.MALFORMED


def test_prepaid_card_channels_may_underpay() -> None:
    assert parse(signed_body()).underpay_channels == {str(n) for n in range(101, 117)}


# --- times ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "utc"),
    [
        ("20140101120130", datetime(2014, 1, 1, 4, 1, 30, tzinfo=UTC)),
        ("20140101050000", datetime(2013, 12, 31, 21, 0, 0, tzinfo=UTC)),
        ("20240229235959", datetime(2024, 2, 29, 15, 59, 59, tzinfo=UTC)),
    ],
)
def test_succ_time_is_china_time_converted_to_utc(text: str, utc: datetime) -> None:
    paid_at = parse(signed_body(SuccTime=text)).paid_at
    assert paid_at == utc
    assert paid_at is not None and paid_at.utcoffset() is not None


BAD_TIMES = [
    "",
    "2014010112013",
    "201401011201300",
    "20141301120000",
    "20230229120000",
    "20140101250000",
    "00000101000000",
    "00010101000000",  # year 1 in China time is before the first UTC instant
    "2014-01-01 12:0",
    "\uff120140101120130",
]


@pytest.mark.parametrize("zone", ["Asia/Shanghai", "America/New_York", "UTC"])
def test_succ_time_is_utc_whatever_the_machines_time_zone(
    zone: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        paid_at = parse_succ_time("20140101120130")
    finally:
        monkeypatch.undo()
        time.tzset()
    assert paid_at is not None and paid_at.tzinfo is UTC
    assert paid_at == datetime(2014, 1, 1, 4, 1, 30, tzinfo=UTC)


@pytest.mark.parametrize("text", BAD_TIMES)
def test_bad_succ_time_is_malformed_when_paid(text: str) -> None:
    assert parse_succ_time(text) is None
    assert refused(signed_body(SuccTime=text)).outcome is Outcome.MALFORMED


@pytest.mark.parametrize("text", BAD_TIMES)
def test_bad_succ_time_of_a_failure_is_no_time(text: str) -> None:
    n = parse(signed_body(Result="0", ResultDesc="0002", SuccTime=text))
    assert (n.target, n.paid_at) == (Status.FAILED, None)


# --- merchants ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("member", "terminal"), [(MEMBER_ID, "10000002"), ("100000179", TERMINAL_ID), ("", "")]
)
def test_unknown_merchant_pair(member: str, terminal: str) -> None:
    rejected = refused(signed_body(MemberID=member, TerminalID=terminal))
    assert rejected.outcome is Outcome.UNKNOWN_MERCHANT
    assert rejected.out_trade_no == "20140101120000001"
    assert rejected.merchant_id == (member or None)


def test_merchants_are_found_by_both_ids() -> None:
    gw = gateway((MEMBER_ID, "10000002"), ("200000001", TERMINAL_ID))
    body = signed_body(TerminalID="10000002")
    assert gw.parse(inbound(body)).merchant_id == MEMBER_ID


def test_unrecordable_identifiers_are_left_out_of_rejections() -> None:
    body = signed_body(MemberID="1\x00", TransID="x" * 65)
    rejected = refused(body)
    assert rejected.outcome is Outcome.UNKNOWN_MERCHANT
    assert (rejected.merchant_id, rejected.out_trade_no) == (None, None)


def test_from_config_keeps_allowed_ips() -> None:
    merchant = BaofooMerchant(member_id=MEMBER_ID, terminal_id=TERMINAL_ID, md5_key=SECRET)
    only = (ipaddress.ip_network("203.0.113.0/24"),)
    gw = BaofooGateway.from_config(BaofooConfig(merchants=(merchant,), allowed_ips=only))
    assert gw.allowed_ips == only


@pytest.mark.parametrize(("length", "kept"), [(64, True), (65, False)])
def test_unverified_identifiers_up_to_64_characters_are_recorded(length: int, kept: bool) -> None:
    member, trans = "M" * length, "T" * length
    rejected = refused(encode_form({"MemberID": member, "TransID": trans}))
    expected = (member, trans) if kept else (None, None)
    assert (rejected.merchant_id, rejected.out_trade_no) == expected


def test_from_config_and_repr_keep_the_key_out() -> None:
    merchant = BaofooMerchant(member_id=MEMBER_ID, terminal_id=TERMINAL_ID, md5_key=SECRET)
    gw: Gateway = BaofooGateway.from_config(BaofooConfig(merchants=(merchant,)))
    assert isinstance(gw, BaofooGateway)
    assert gw.provider == "baofoo"
    assert gw.allowed_ips == ()
    assert SECRET not in repr(gw)
    assert MEMBER_ID in repr(gw)


# --- replies --------------------------------------------------------------------------------


@pytest.mark.parametrize("outcome", ACCEPTED)
def test_accepted_outcomes_reply_exactly_ok(outcome: Outcome) -> None:
    assert reply(gateway().dialect, outcome) == Reply(
        status=200, body=b"OK", content_type="text/plain"
    )


@pytest.mark.parametrize("answer", [*REFUSED, *Refusal])
def test_refusals_reply_fail_and_never_begin_with_ok(answer: Outcome | Refusal) -> None:
    r = reply(gateway().dialect, answer)
    assert r.body == b"FAIL"
    assert r.status >= 400
    assert b"OK" not in r.body.lstrip(b" ")[:5].upper()


def test_database_unavailable_is_503() -> None:
    assert reply(gateway().dialect, Refusal.DATABASE_UNAVAILABLE).status == 503


# --- properties -----------------------------------------------------------------------------


@given(name=st.sampled_from(SIGNED_FIELDS), value=form_text)
def test_changing_any_signed_field_fails_verification(name: str, value: str) -> None:
    original = baofoo_fields()
    if value == original[name]:
        return
    fields = {**sign_baofoo(original, SECRET), name: value}
    # The altered pair is configured too, so only the signature can refuse it.
    gw = gateway((MEMBER_ID, TERMINAL_ID), (fields["MemberID"], fields["TerminalID"]), key=SECRET)
    with pytest.raises(Rejected) as info:
        gw.parse(inbound(encode_form(fields)))
    assert info.value.outcome is Outcome.BAD_SIGNATURE


charsets = st.one_of(
    st.none(), st.sampled_from(["utf-8", "gbk", "gb18030", "gb2312", "utf8"]), st.text(max_size=12)
)
content_types = st.one_of(st.just(FORM), st.text(max_size=40))
known_names = st.sampled_from([*SIGNED_FIELDS, "Md5Sign", "Other"]).map(str.encode)


def _refused_with_a_typed_reason(gw: BaofooGateway, request: Inbound) -> None:
    """Without a valid Md5Sign a request is refused, saying why, and the key never leaks."""
    with pytest.raises(Rejected) as info:
        gw.parse(request)
    exc = info.value
    assert exc.outcome in {Outcome.MALFORMED, Outcome.BAD_SIGNATURE, Outcome.UNKNOWN_MERCHANT}
    assert isinstance(exc.reason, str) and exc.reason
    assert SECRET not in str(exc)
    assert SECRET not in repr(exc)
    assert exc.media_type in {False, True}


@given(body=st.binary(max_size=300), charset=charsets, content_type=content_types)
def test_arbitrary_bytes_are_always_refused_with_a_reason(
    body: bytes, charset: str | None, content_type: str
) -> None:
    gw = gateway(key=SECRET)
    _refused_with_a_typed_reason(gw, inbound(body, charset=charset, content_type=content_type))


@given(
    pairs=st.lists(st.tuples(known_names, st.binary(max_size=30)), max_size=12),
    charset=charsets,
)
def test_arbitrary_form_like_bytes_are_always_refused_with_a_reason(
    pairs: list[tuple[bytes, bytes]], charset: str | None
) -> None:
    body = b"&".join(name + b"=" + value for name, value in pairs)
    _refused_with_a_typed_reason(gateway(key=SECRET), inbound(body, charset=charset))


def _mostly(*likely: str, digits: int = 0) -> st.SearchStrategy[str]:
    """Plausible values often enough to reach the checks behind the signature."""
    numeric = st.text("0123456789", min_size=digits, max_size=digits) if digits else st.nothing()
    return st.one_of(st.sampled_from(likely), numeric, form_text)


def _target_of(fields: dict[str, str]) -> Status | None:
    """The test's own reading of Result and ResultDesc (seed, section 4)."""
    if (fields["Result"], fields["ResultDesc"]) == ("1", "01"):
        return Status.PAID
    code = fields["ResultDesc"]
    if fields["Result"] == "0" and code != "01" and re.fullmatch(r"[0-9A-Za-z]{0,16}", code):
        return Status.FAILED
    return None


@given(
    values=st.fixed_dictionaries(
        {
            "TransID": form_text,
            "Result": _mostly("0", "1"),
            "ResultDesc": _mostly("01", "0000", "0013"),
            "FactMoney": _mostly("100", digits=15),
            "SuccTime": _mostly("20140101120130", digits=14),
        }
    ),
    info=form_text,
)
def test_a_validly_signed_form_comes_to_exactly_its_fields_or_a_typed_refusal(
    values: dict[str, str], info: str
) -> None:
    fields = sign_baofoo(baofoo_fields(**values, AdditionalInfo=info), SECRET)
    try:
        n = gateway(key=SECRET).parse(inbound(encode_form(fields)))
    except Rejected as exc:
        assert (exc.outcome, exc.media_type) == (Outcome.MALFORMED, False)
        assert exc.reason and SECRET not in str(exc)
        return
    target = _target_of(fields)
    assert target is not None and n.target is target
    assert (n.provider, n.merchant_id, n.out_trade_no) == ("baofoo", MEMBER_ID, values["TransID"])
    assert n.paid_amount_minor == (int(values["FactMoney"]) if values["FactMoney"] else None)
    assert n.paid_at == parse_succ_time(values["SuccTime"])
    assert (n.currency, n.order_amount_minor, n.nonce) == ("CNY", None, None)
