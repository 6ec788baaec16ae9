"""The GoPay adapter: the gateway protocol, and the scanner that finds the signed charge span."""

from __future__ import annotations

from decimal import Decimal

import pytest

from receiver.core.notification import Outcome
from receiver.errors import Rejected
from receiver.gateways import Gateway
from receiver.gateways.gopay import (
    GoPayGateway,
    find_charge_span,
    read_charge,
)
from tests.support.gopay_adapter import (
    CHARGE,
    NOW_MS,
    inbound,
    notify,
    span_text,
)
from tests.support.gopay_signer import GoPaySigner, php_json_encode


def test_gateway_satisfies_the_protocol(gateway: GoPayGateway) -> None:
    gw: Gateway = gateway
    assert gw.provider == "gopay"
    assert gateway.allowed_ips == ()


# --- the charge span scanner ------------------------------------------------------------------


def test_span_of_a_php_body_is_the_php_encoded_charge(signer: GoPaySigner) -> None:
    body, _ = notify(signer)
    assert span_text(body) == php_json_encode(CHARGE)


def test_span_ignores_braces_and_quotes_inside_strings() -> None:
    body = (
        b'{"a":"}{\\"charge\\":{}","charge" : {"x":"\\\\","y":"\\/\\"}",'
        b'"z":{"n":[1,{"q":"}]"}]}} ,"b":[{"charge":1}]}'
    )
    assert span_text(body) == b'{"x":"\\\\","y":"\\/\\"}","z":{"n":[1,{"q":"}]"}]}}'


def test_span_ignores_a_charge_nested_in_another_member() -> None:
    body = b'{"data":{"charge":{"x":1}},"charge":{"y":2}}'
    assert span_text(body) == b'{"y":2}'


def test_span_keeps_whitespace_inside_the_charge() -> None:
    body = (
        b'\r\n {\n  "result_code": "OK",\n  "charge" :\t{\n    "a": "1" ,\n    "b": [ ]\n  }\n}\n'
    )
    assert span_text(body) == b'{\n    "a": "1" ,\n    "b": [ ]\n  }'


def test_span_handles_php_unicode_escapes() -> None:
    body = b'{"charge":{"subject":"VIP\\u5145\\u503c \\ud83d\\ude00 \\"}\\"","u":"\\u007d"}}'
    assert span_text(body) == body[10:-1]


def test_an_escaped_spelling_of_charge_is_still_the_charge() -> None:
    assert span_text(b'{"\\u0063harge":{"a":1}}') == b'{"a":1}'


NOT_AN_OBJECT = "body is not a JSON object"
INVALID = "body is not valid JSON"
NO_CHARGE = "charge is missing"
NOT_OBJECT_CHARGE = "charge is not an object"
TRAILING = "data after the top-level object"
NO_NAME = "expected a member name"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", NOT_AN_OBJECT),
        (b"   ", NOT_AN_OBJECT),
        (b"[]", NOT_AN_OBJECT),
        (b'"charge"', NOT_AN_OBJECT),
        (b"\xff{}", "body is not UTF-8"),
        (b"{}", NO_CHARGE),
        (b"{}\n", NO_CHARGE),
        (b'{"charge":"{}"}', NOT_OBJECT_CHARGE),
        (b'{"charge":[{}]}', NOT_OBJECT_CHARGE),
        (b'{"charge":null}', NOT_OBJECT_CHARGE),
        (b'{"charge":1}', NOT_OBJECT_CHARGE),
        (b'{"charge":{},"charge":{}}', "charge appears twice"),
        (b'{"charge":{},"\\u0063harge":{}}', "charge appears twice"),
        (b'{"a":1,"a":2,"charge":{}}', "a member name appears twice"),
        (b'{"other":{"charge":{}}}', NO_CHARGE),
        (b'{"charge":{"a":"}', INVALID),
        (b'{"charge":{"a":1}', "expected ',' or '}'"),
        (b'{"charge":{"a":1} "b":2}', "expected ',' or '}'"),
        (b'{"charge":{"a":[1}]}', INVALID),
        (b'{"charge":{"a":1,"a":2}}', INVALID),
        (b'{"charge":{"a":NaN}}', INVALID),
        (b'{"charge":{}} x', TRAILING),
        (b'{"charge":{}}x', TRAILING),
        (b'{"charge":{}}{}', TRAILING),
        (b'{"charge":{"a":"\\x"}}', INVALID),
        (b'{"charge":{"a":"\\u12"}}', INVALID),
        (b'{"cha', INVALID),
        (b'{"charge" {}}', "expected ':' after a member name"),
        (b"{charge:{}}", NO_NAME),
        (b'{"charge":{},}', NO_NAME),
        (b'{"charge":}', INVALID),
        (b'{\x0c"charge":{}}', NO_NAME),  # space to str.isspace(), not to JSON
        (b'{"charge"\xc2\xa0:{}}', "expected ':' after a member name"),
        (b'{"charge":{}}\x0b', TRAILING),
    ],
)
def test_span_scanner_refuses_bodies_without_exactly_one_charge_object(
    body: bytes, reason: str
) -> None:
    with pytest.raises(Rejected) as info:
        find_charge_span(body)
    assert (info.value.outcome, info.value.reason) == (Outcome.MALFORMED, reason)


def test_trailing_whitespace_after_the_top_level_object_is_allowed() -> None:
    assert span_text(b'{"charge":{"a":1}} \r\n\t') == b'{"a":1}'


def test_raw_utf8_before_the_charge_gives_byte_offsets(
    gateway: GoPayGateway, signer: GoPaySigner
) -> None:
    charge = php_json_encode(CHARGE)
    body = '{"note":"成功 ✓ 😀","result_code":"OK","result_msg":"SUCCESS","charge":'.encode()
    body += charge + b"}"
    assert span_text(body) == charge
    headers = signer.headers(charge, timestamp=str(NOW_MS))
    assert gateway.parse(inbound(body, headers)).out_trade_no == CHARGE["out_trade_no"]


def test_raw_utf8_inside_the_charge_is_signed_as_sent(
    gateway: GoPayGateway, signer: GoPaySigner
) -> None:
    charge = '{"out_trade_no":"Ü1","subject":"充值","amount":"1.00","currency":"CNY"}'.encode()
    body = b'{"result_code":"OK","result_msg":"SUCCESS","charge":' + charge
    body += b',"note":"\xc3\xa9"}'
    assert span_text(body) == charge
    headers = signer.headers(charge, timestamp=str(NOW_MS))
    assert gateway.parse(inbound(body, headers)).out_trade_no == "Ü1"


def test_read_charge_gives_the_raw_bytes_and_the_charge_parsed_from_them() -> None:
    body = b'{"result_code":"OK","charge":{"a":"\\/","n":1.50}}'
    raw, charge = read_charge(body)
    assert raw == b'{"a":"\\/","n":1.50}'
    assert charge == {"a": "/", "n": Decimal("1.50")}
