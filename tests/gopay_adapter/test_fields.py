"""The GoPay adapter: business fields, content types, protocol fields, payouts and nonces."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from receiver.core.notification import Outcome, Status
from receiver.errors import Rejected
from receiver.gateways.gopay import (
    GoPayGateway,
    parse_amount_minor,
)
from receiver.gateways.gopay.notify import parse_status
from tests.support.gopay_adapter import (
    ABSENT,
    CHARGE,
    MCHID,
    NOW_MS,
    inbound,
    notify,
    rejected,
    signed_body,
    with_charge,
)
from tests.support.gopay_signer import GoPaySigner, php_json_encode

# --- business fields --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "minor"),
    [
        ("100.000", 10000),
        ("100", 10000),
        ("1.66", 166),
        ("1.5", 150),
        ("7.50", 750),
        ("1.660", 166),
        ("0.01", 1),
        ("0", 0),
        (5, 500),
        (Decimal("1.660"), 166),
        ("999999999999999.99", 99999999999999999),
    ],
)
def test_amounts_parse_to_minor_units(value: object, minor: int) -> None:
    assert parse_amount_minor(value) == minor


@pytest.mark.parametrize(
    "value",
    [
        "1.665",
        "0.001",
        "-1",
        "1e3",
        "1E+3",
        Decimal("1e3"),
        Decimal("-1"),
        "NaN",
        "Infinity",
        "1.0000",
        "1.",
        ".5",
        " 1",
        "",
        "1,00",
        "1000000000000000",
        "\uff11",
        True,
        None,
        [1],
    ],
)
def test_bad_amounts_are_refused(value: object) -> None:
    with pytest.raises(ValueError):
        parse_amount_minor(value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (1.5, "not a number"),
        (None, "not a number"),
        ([1], "not a number"),
        (True, "not a number"),
        ("1e3", "not a plain decimal amount"),
        ("1.665", "not a whole number of minor units"),
    ],
)
def test_amount_errors_say_what_is_wrong(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        parse_amount_minor(value)


@pytest.mark.parametrize("value", [4, "4", -1, True, None, "2.0", 2.0])
def test_unknown_status_codes_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match=r"^unknown status$"):
        parse_status(value)


@pytest.mark.parametrize(
    ("amounts", "paid", "order"),
    [
        ({"amount": "1.660", "pay_amount": "1.66"}, 166, 166),
        ({"amount": "100.000", "pay_amount": "99.500"}, 9950, 10000),
        ({"amount": "1.660", "pay_amount": ABSENT}, 166, 166),
        ({"amount": 3, "pay_amount": ABSENT}, 300, 300),
    ],
)
def test_amounts_in_a_notification(
    gateway: GoPayGateway, signer: GoPaySigner, amounts: dict[str, Any], paid: int, order: int
) -> None:
    body, headers = notify(signer, with_charge(**amounts))
    n = gateway.parse(inbound(body, headers))
    assert (n.paid_amount_minor, n.order_amount_minor) == (paid, order)


def test_json_number_amount_keeps_its_spelling(gateway: GoPayGateway, signer: GoPaySigner) -> None:
    body = (
        b'{"result_code":"OK","result_msg":"SUCCESS",'
        b'"charge":{"out_trade_no":"A1","amount":1.66,"pay_amount":1e2,"currency":"CNY"}}'
    )
    error = rejected(gateway, body, signed_body(signer, body))
    assert error.outcome is Outcome.MALFORMED and "pay_amount" in error.reason


AMOUNT_REASON = "amount is not an amount with at most 2 significant decimals"
PAY_AMOUNT_REASON = "pay_amount is not an amount with at most 2 significant decimals"
CURRENCY_REASON = "currency must be a 3-letter upper-case code"
STATUS_REASON = "status must be 0, 1, 2 or 3"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"amount": "1.665"}, AMOUNT_REASON),
        ({"amount": "-1"}, AMOUNT_REASON),
        ({"amount": "1e3"}, AMOUNT_REASON),
        ({"amount": ABSENT}, "amount is missing"),
        ({"pay_amount": "NaN"}, PAY_AMOUNT_REASON),
        ({"pay_amount": None}, PAY_AMOUNT_REASON),
        ({"currency": ABSENT}, CURRENCY_REASON),
        ({"currency": "cny"}, CURRENCY_REASON),
        ({"currency": "CNYX"}, CURRENCY_REASON),
        ({"currency": 156}, CURRENCY_REASON),
        ({"out_trade_no": ABSENT}, "out_trade_no is missing or empty"),
        ({"out_trade_no": ""}, "out_trade_no is missing or empty"),
        ({"out_trade_no": None}, "out_trade_no is missing or empty"),
        ({"out_trade_no": Decimal("1.5")}, "out_trade_no must be a string"),
        ({"out_trade_no": "A" * 129}, "out_trade_no is too long or not printable"),
        ({"out_trade_no": "A\tB"}, "out_trade_no is too long or not printable"),
        ({"in_trade_no": {"x": 1}}, "in_trade_no must be a string"),
        ({"trade_no": "T" * 129}, "trade_no is too long or not printable"),
        ({"in_trade_no": "T\x00"}, "in_trade_no is too long or not printable"),
        ({"status": 4}, STATUS_REASON),
        ({"status": "paid"}, STATUS_REASON),
        ({"status": None}, STATUS_REASON),
        ({"status": True}, STATUS_REASON),
        ({"status": Decimal("2.0")}, STATUS_REASON),
        ({"status": "-1"}, STATUS_REASON),
        ({"channel": ["gopay_payout"]}, "channel must be a string"),
    ],
)
def test_bad_business_fields_are_malformed(
    gateway: GoPayGateway, signer: GoPaySigner, changes: dict[str, Any], reason: str
) -> None:
    body, headers = notify(signer, with_charge(**changes))
    error = rejected(gateway, body, headers)
    assert (error.outcome, error.reason) == (Outcome.MALFORMED, reason)
    assert error.merchant_id == MCHID


@pytest.mark.parametrize(
    ("status", "target"),
    [
        (0, Status.CLOSED),
        ("0", Status.CLOSED),
        (1, None),
        ("1", None),
        (2, Status.PAID),
        ("2", Status.PAID),
        (3, Status.FAILED),
        ("3", Status.FAILED),
        (ABSENT, Status.PAID),
    ],
)
def test_status_as_number_string_or_absent(
    gateway: GoPayGateway, signer: GoPaySigner, status: object, target: Status | None
) -> None:
    body, headers = notify(signer, with_charge(status=status))
    assert gateway.parse(inbound(body, headers)).target is target


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"trade_no": "C2020040701181440794"}, "C2020040701181440794"),
        ({"in_trade_no": "D20210405084748405"}, "D20210405084748405"),
        ({"in_trade_no": ""}, None),
        ({"in_trade_no": ABSENT}, None),
        ({"in_trade_no": None}, None),
        ({"trade_no": "", "in_trade_no": "D1"}, "D1"),
    ],
)
def test_provider_trade_no(
    gateway: GoPayGateway, signer: GoPaySigner, changes: dict[str, Any], expected: str | None
) -> None:
    body, headers = notify(signer, with_charge(**changes))
    assert gateway.parse(inbound(body, headers)).provider_trade_no == expected


def test_integer_out_trade_no_is_its_decimal_text(
    gateway: GoPayGateway, signer: GoPaySigner
) -> None:
    body, headers = notify(signer, with_charge(out_trade_no=1009660380201506130))
    assert gateway.parse(inbound(body, headers)).out_trade_no == "1009660380201506130"


# --- content type -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "charset"),
    [
        ("application/x-www-form-urlencoded", "utf-8"),
        ("text/plain", None),
        ("", None),
        ("application/json", "gbk"),
    ],
)
def test_wrong_content_type_is_415(
    gateway: GoPayGateway, signer: GoPaySigner, content_type: str, charset: str | None
) -> None:
    body, headers = notify(signer)
    with pytest.raises(Rejected) as info:
        gateway.parse(inbound(body, headers, content_type=content_type, charset=charset))
    assert (info.value.outcome, info.value.media_type) == (Outcome.MALFORMED, True)


@pytest.mark.parametrize(
    ("content_type", "charset", "reason"),
    [
        ("text/plain", None, "content type must be application/json"),
        ("application/json; charset=utf-8; x=1", None, None),
        ("application/jsonx; a=1; b=2", None, "content type must be application/json"),
        ("application/json", "latin-1", "charset must be UTF-8"),
        ("application/json", " UTF8 ", None),
    ],
)
def test_content_type_decisions_name_the_reason(
    gateway: GoPayGateway,
    signer: GoPaySigner,
    content_type: str,
    charset: str | None,
    reason: str | None,
) -> None:
    body, headers = notify(signer)
    request = inbound(body, headers, content_type=content_type, charset=charset)
    if reason is None:
        assert gateway.parse(request).merchant_id == MCHID
        return
    with pytest.raises(Rejected) as info:
        gateway.parse(request)
    assert (info.value.outcome, info.value.media_type, info.value.reason) == (
        Outcome.MALFORMED,
        True,
        reason,
    )


@pytest.mark.parametrize(
    ("content_type", "charset"),
    [("application/json", None), ("Application/JSON; charset=UTF-8", "UTF-8")],
)
def test_json_content_type_variants_are_accepted(
    gateway: GoPayGateway, signer: GoPaySigner, content_type: str, charset: str | None
) -> None:
    body, headers = notify(signer)
    assert gateway.parse(inbound(body, headers, content_type=content_type, charset=charset))


@pytest.mark.parametrize(
    "body",
    [
        b'{"charge":{"out_trade_no":"A","amount":"1","currency":"CNY"},"x":NaN}',
        b'{"charge":{"out_trade_no":"A","amount":"1","currency":"CNY","amount":"2"}}',
        b'{"charge":{"out_trade_no":"A","amount":"1","currency":"CNY"},"y":1,"y":2}',
        b'{"charge":{"out_trade_no":"\xff","amount":"1","currency":"CNY"}}',
        b'{"charge":{"out_trade_no":"A","amount":"1","currency":"CNY"},"z":[1,]}',
    ],
)
def test_invalid_json_around_a_charge_is_malformed(
    gateway: GoPayGateway, signer: GoPaySigner, body: bytes
) -> None:
    assert rejected(gateway, body, signed_body(signer, body)).outcome is Outcome.MALFORMED


# --- protocol fields, payouts and nonces ----------------------------------------------------

_NO_RESULT_CODE = object()


def body_with_result_code(signer: GoPaySigner, result_code: object) -> tuple[bytes, dict[str, str]]:
    """A correctly signed charge inside a top level with this `result_code` (or none)."""
    top: dict[str, Any] = {"result_code": result_code, "result_msg": "SUCCESS", "charge": CHARGE}
    if result_code is _NO_RESULT_CODE:
        del top["result_code"]
    body = php_json_encode(top)
    return body, signer.headers(php_json_encode(CHARGE), timestamp=str(NOW_MS))


@pytest.mark.parametrize("result_code", ["FAIL", "ok", "OK ", "", None, 0, ["OK"], _NO_RESULT_CODE])
def test_result_code_other_than_ok_is_malformed_after_verifying(
    gateway: GoPayGateway, signer: GoPaySigner, result_code: object
) -> None:
    body, headers = body_with_result_code(signer, result_code)
    error = rejected(gateway, body, headers)
    assert (error.outcome, error.reason) == (Outcome.MALFORMED, "result_code is not OK")
    assert (error.merchant_id, error.out_trade_no) == (MCHID, CHARGE["out_trade_no"])


@pytest.mark.parametrize("result_msg", ["FAIL", "success", "", None, _NO_RESULT_CODE])
def test_result_msg_other_than_success_is_malformed(
    gateway: GoPayGateway, signer: GoPaySigner, result_msg: object
) -> None:
    top: dict[str, Any] = {"result_code": "OK", "result_msg": result_msg, "charge": CHARGE}
    if result_msg is _NO_RESULT_CODE:
        del top["result_msg"]
    headers = signer.headers(php_json_encode(CHARGE), timestamp=str(NOW_MS))
    error = rejected(gateway, php_json_encode(top), headers)
    assert (error.outcome, error.reason) == (Outcome.MALFORMED, "result_msg is not SUCCESS")


def test_result_code_is_checked_after_the_signature(
    gateway: GoPayGateway, other_key: rsa.RSAPrivateKey
) -> None:
    body, headers = body_with_result_code(GoPaySigner(other_key), "FAIL")
    assert rejected(gateway, body, headers).outcome is Outcome.BAD_SIGNATURE


def test_result_code_ok_after_the_charge_is_read_too(
    gateway: GoPayGateway, signer: GoPaySigner
) -> None:
    charge = php_json_encode(CHARGE)
    body = b'{"charge":' + charge + b',"result_msg":"SUCCESS","result_code":"OK"}'
    headers = signer.headers(charge, timestamp=str(NOW_MS))
    assert gateway.parse(inbound(body, headers)).out_trade_no == CHARGE["out_trade_no"]


def test_payout_charge_is_marked_as_a_payout(gateway: GoPayGateway, signer: GoPaySigner) -> None:
    body, headers = notify(signer, with_charge(channel="gopay_payout"))
    n = gateway.parse(inbound(body, headers))
    assert n.payout and (n.merchant_id, n.out_trade_no) == (MCHID, CHARGE["out_trade_no"])


@pytest.mark.parametrize("channel", ["gopay_banktransfer", "gopay_payout ", "GOPAY_PAYOUT", ABSENT])
def test_other_channels_are_payments(
    gateway: GoPayGateway, signer: GoPaySigner, channel: object
) -> None:
    body, headers = notify(signer, with_charge(channel=channel))
    assert gateway.parse(inbound(body, headers)).payout is False


@pytest.mark.parametrize("length", [1, 32, 64])
def test_nonce_up_to_64_characters_is_accepted(
    gateway: GoPayGateway, signer: GoPaySigner, length: int
) -> None:
    body, headers = notify(signer, nonce="N" * length)
    assert gateway.parse(inbound(body, headers)).nonce == "N" * length


@pytest.mark.parametrize("length", [65, 5000])
def test_nonce_over_64_characters_is_malformed(
    gateway: GoPayGateway, signer: GoPaySigner, length: int
) -> None:
    body, headers = notify(signer, nonce="N" * length)
    error = rejected(gateway, body, headers)
    assert (error.outcome, error.reason) == (
        Outcome.MALFORMED,
        "x-ca-noncestr is over 64 characters",
    )
    assert (error.merchant_id, error.out_trade_no) == (MCHID, CHARGE["out_trade_no"])


@pytest.mark.parametrize("name", ["X-Ca-Noncestr", "X-Ca-Timestamp", "X-Ca-Signature"])
def test_empty_signature_header_is_refused(
    gateway: GoPayGateway, signer: GoPaySigner, name: str
) -> None:
    # An empty nonce, even one the signature covers, lets every replay through.
    body, headers = notify(signer, nonce="" if name == "X-Ca-Noncestr" else None)
    headers[name] = ""
    error = rejected(gateway, body, headers)
    assert (error.outcome, error.reason) == (
        Outcome.BAD_SIGNATURE,
        f"{name.lower()} header is missing",
    )
