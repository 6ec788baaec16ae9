"""Unit tests of the GoPay adapter: pure bytes in, Notification or Rejected out."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from receiver.config import GoPayConfig, GoPayMerchant
from receiver.errors import ConfigError, Rejected
from receiver.gateways import Gateway, Refusal, reply
from receiver.gateways.gopay import (
    FAIL_BODY,
    SUCCESS_BODY,
    GoPayGateway,
    find_charge_span,
    load_public_key,
    parse_amount_minor,
    parse_timestamp,
    spki_der,
)
from receiver.notification import Inbound, Notification, Outcome, Status
from tests.gopay_signer import GoPaySigner, new_rsa_key, php_json_encode, public_key_text

NOW_MS = 1617583668305
NOW = NOW_MS / 1000
MCHID = "200001"

CHARGE: dict[str, Any] = {
    "puid": 0,
    "mid": 200001,
    "out_trade_no": "202105040857211617584241",
    "in_trade_no": "",
    "subject": "VIP充值 - 100000",
    "channel": "gopay_banktransfer",
    "extra": "[]",
    "amount": "100.000",
    "pay_amount": "100.000",
    "keyword": None,
    "currency": "CNY",
    "return_url": "https://golden88.io/demo.html",
    "notify_url": "https://golden88.io/cashier/demonotify",
    "status": 2,
}


# --- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return new_rsa_key()


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return new_rsa_key()


@pytest.fixture(scope="module")
def signer(key: rsa.RSAPrivateKey) -> GoPaySigner:
    return GoPaySigner(key)


@pytest.fixture(scope="module")
def gateway(key: rsa.RSAPrivateKey) -> GoPayGateway:
    return make_gateway({MCHID: [key]})


def make_gateway(
    merchants: Mapping[str, list[rsa.RSAPrivateKey]],
    *,
    tolerance: int = 900,
    now: float = NOW,
) -> GoPayGateway:
    return GoPayGateway(
        merchants={m: tuple(k.public_key() for k in keys) for m, keys in merchants.items()},
        timestamp_tolerance_s=tolerance,
        clock=lambda: now,
    )


def inbound(
    body: bytes,
    headers: Mapping[str, str],
    *,
    content_type: str = "application/json",
    charset: str | None = "utf-8",
) -> Inbound:
    return Inbound(
        provider="gopay",
        body=body,
        headers=headers,
        content_type=content_type,
        charset=charset,
        remote_addr="203.0.113.7",
    )


def notify(
    signer: GoPaySigner, charge: Mapping[str, Any] = CHARGE, **kwargs: Any
) -> tuple[bytes, dict[str, str]]:
    kwargs.setdefault("timestamp", str(NOW_MS))
    return signer.notify(charge, **kwargs)


def with_charge(**changes: Any) -> dict[str, Any]:
    charge = {k: v for k, v in CHARGE.items() if k not in changes}
    charge.update({k: v for k, v in changes.items() if v is not _ABSENT})
    return charge


_ABSENT = object()


def rejected(gw: GoPayGateway, body: bytes, headers: Mapping[str, str]) -> Rejected:
    with pytest.raises(Rejected) as info:
        gw.parse(inbound(body, headers))
    return info.value


def signed_body(signer: GoPaySigner, body: bytes, **kwargs: Any) -> dict[str, str]:
    """Headers signing the charge span of a hand-written body (valid or not around it)."""
    try:
        start, end = find_charge_span(body)
    except Rejected:  # invalid elsewhere: sign the first flat object after "charge"
        start = body.index(b"{", body.index(b'"charge"'))
        end = body.index(b"}", start) + 1
    kwargs.setdefault("timestamp", str(NOW_MS))
    kwargs.setdefault("nonce", "963613FA553D6405C6E0D345BA32B6DB")
    return signer.headers(body[start:end], **kwargs)


def test_gateway_satisfies_the_protocol(gateway: GoPayGateway) -> None:
    gw: Gateway = gateway
    assert gw.provider == "gopay"
    assert gateway.allowed_ips == ()


# --- the charge span scanner ------------------------------------------------------------------


def span_text(body: bytes) -> bytes:
    start, end = find_charge_span(body)
    return body[start:end]


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


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   ",
        b"[]",
        b'"charge"',
        b"{}",
        b'{"charge":"{}"}',
        b'{"charge":[{}]}',
        b'{"charge":null}',
        b'{"charge":1}',
        b'{"charge":{},"charge":{}}',
        b'{"charge":{},"\\u0063harge":{}}',
        b'{"other":{"charge":{}}}',
        b'{"charge":{"a":"}',
        b'{"charge":{"a":1}',
        b'{"charge":{"a":[1}]}',
        b'{"charge":{}} x',
        b'{"charge":{}}{}',
        b'{"charge":{"a":"\\x"}}',
        b'{"charge":{"a":"\\u12"}}',
        b'{"charge" {}}',
        b"{charge:{}}",
        b'{"charge":{},}',
        b'{"charge":}',
    ],
)
def test_span_scanner_refuses_bodies_without_exactly_one_charge_object(body: bytes) -> None:
    with pytest.raises(Rejected) as info:
        find_charge_span(body)
    assert info.value.outcome is Outcome.MALFORMED


# --- signature over the raw bytes -------------------------------------------------------------


def test_php_body_verifies_although_reserialising_it_gives_other_bytes(
    gateway: GoPayGateway, signer: GoPaySigner
) -> None:
    charge = with_charge(subject="VIP充值 - 100000 / 测试", amount="1.660", pay_amount="1.660")
    body, headers = notify(signer, charge)
    raw = span_text(body)
    parsed = json.loads(raw, parse_float=Decimal)
    reserialised = [
        json.dumps(parsed, separators=(",", ":"), default=str).encode(),
        json.dumps(parsed, separators=(",", ":"), ensure_ascii=False, default=str).encode(),
        json.dumps(parsed, default=str).encode(),
    ]
    assert all(r != raw for r in reserialised)
    assert b"\\/" in raw and b"\\u5145" in raw

    n = gateway.parse(inbound(body, headers))
    assert n.paid_amount_minor == 166 and n.detail == "signature=base64"

    forged = body.replace(raw, reserialised[0])
    assert rejected(gateway, forged, headers).outcome is Outcome.BAD_SIGNATURE


def test_pretty_printed_body_verifies_over_its_raw_span(
    gateway: GoPayGateway, signer: GoPaySigner
) -> None:
    body = json.dumps({"result_code": "OK", "charge": CHARGE}, indent=2).encode()
    headers = signed_body(signer, body)
    assert gateway.parse(inbound(body, headers)).out_trade_no == CHARGE["out_trade_no"]


def test_legacy_plain_signature_verifies_and_is_recorded(
    gateway: GoPayGateway, signer: GoPaySigner
) -> None:
    body, headers = notify(signer, base64_step=False)
    assert gateway.parse(inbound(body, headers)).detail == "signature=plain"


def test_verified_notification_carries_the_charge(
    gateway: GoPayGateway, signer: GoPaySigner
) -> None:
    body, headers = notify(signer, nonce="963613FA553D6405C6E0D345BA32B6DB")
    n = gateway.parse(inbound(body, headers))
    assert n == Notification(
        provider="gopay",
        merchant_id=MCHID,
        out_trade_no="202105040857211617584241",
        target=Status.PAID,
        paid_amount_minor=10000,
        order_amount_minor=10000,
        currency="CNY",
        provider_trade_no=None,
        nonce="963613FA553D6405C6E0D345BA32B6DB",
        signed_headers={
            "x-ca-noncestr": headers["X-Ca-Noncestr"],
            "x-ca-timestamp": headers["X-Ca-Timestamp"],
            "x-ca-signature": headers["X-Ca-Signature"],
        },
        detail="signature=base64",
    )


def test_headers_are_looked_up_case_insensitively(
    gateway: GoPayGateway, signer: GoPaySigner
) -> None:
    body, headers = notify(signer)
    for transform in (str.lower, str.upper):
        changed = {transform(k): v for k, v in headers.items()}
        assert gateway.parse(inbound(body, changed)).merchant_id == MCHID


@pytest.mark.parametrize("missing", ["X-Ca-Noncestr", "X-Ca-Timestamp", "X-Ca-Signature"])
def test_missing_signature_header_is_bad_signature(
    gateway: GoPayGateway, signer: GoPaySigner, missing: str
) -> None:
    body, headers = notify(signer)
    del headers[missing]
    error = rejected(gateway, body, headers)
    assert error.outcome is Outcome.BAD_SIGNATURE
    assert (error.merchant_id, error.out_trade_no) == (MCHID, CHARGE["out_trade_no"])


def tamper_byte(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def test_tampered_charge_byte_is_bad_signature(gateway: GoPayGateway, signer: GoPaySigner) -> None:
    body, headers = notify(signer)
    forged = body.replace(b'"100.000"', b'"900.000"')
    error = rejected(gateway, forged, headers)
    assert error.outcome is Outcome.BAD_SIGNATURE
    assert (error.merchant_id, error.out_trade_no) == (MCHID, CHARGE["out_trade_no"])


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("X-Ca-Timestamp", str(NOW_MS + 1)),
        ("X-Ca-Noncestr", "963613FA553D6405C6E0D345BA32B6DC"),
    ],
)
def test_tampered_signed_header_is_bad_signature(
    gateway: GoPayGateway, signer: GoPaySigner, header: str, value: str
) -> None:
    body, headers = notify(signer, nonce="963613FA553D6405C6E0D345BA32B6DB")
    headers[header] = value
    assert rejected(gateway, body, headers).outcome is Outcome.BAD_SIGNATURE


@pytest.mark.parametrize("signature", ["not base64!", "AAA", "QUJD", "  ", "ÄÖÜ", "YQ=", "YR=="])
def test_undecodable_or_wrong_signature_is_bad_signature(
    gateway: GoPayGateway, signer: GoPaySigner, signature: str
) -> None:
    body, headers = notify(signer)
    headers["X-Ca-Signature"] = signature
    error = rejected(gateway, body, headers)
    assert error.outcome is Outcome.BAD_SIGNATURE
    assert signature.strip() == "" or signature not in str(error)


def test_non_canonical_base64_signature_is_refused(
    gateway: GoPayGateway, signer: GoPaySigner
) -> None:
    body, headers = notify(signer)
    signature = headers["X-Ca-Signature"]
    assert signature.endswith("==")  # 256 bytes: the last group has 4 unused bits
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = signature[-3]
    twin = alphabet[alphabet.index(last) ^ 0x01]
    headers["X-Ca-Signature"] = signature[:-3] + twin + "=="
    assert base64.b64decode(headers["X-Ca-Signature"]) == base64.b64decode(signature)
    assert rejected(gateway, body, headers).outcome is Outcome.BAD_SIGNATURE


def test_signature_by_another_key_is_bad_signature(
    gateway: GoPayGateway, other_key: rsa.RSAPrivateKey
) -> None:
    body, headers = notify(GoPaySigner(other_key))
    assert rejected(gateway, body, headers).outcome is Outcome.BAD_SIGNATURE


def test_rejection_text_holds_no_signature(gateway: GoPayGateway, signer: GoPaySigner) -> None:
    body, headers = notify(signer)
    error = rejected(gateway, body.replace(b"CNY", b"INR"), headers)
    assert headers["X-Ca-Signature"] not in str(error) + repr(error)
    assert headers["X-Ca-Signature"][:16] not in repr(gateway)


# --- keys -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["spki_pem", "pkcs1_pem", "base64"])
def test_every_key_format_loads(key: rsa.RSAPrivateKey, fmt: str) -> None:
    text = public_key_text(key, fmt)
    indented = "\n".join("    " + line for line in text.splitlines()) + "\n\n"
    for variant in (text, indented, text.strip()):
        assert spki_der(load_public_key(variant)) == spki_der(key.public_key())


def test_bare_base64_of_pkcs1_der_loads(key: rsa.RSAPrivateKey) -> None:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.PKCS1
    )
    loaded = load_public_key(base64.b64encode(der).decode())
    assert spki_der(loaded) == spki_der(key.public_key())


def test_non_rsa_or_garbage_key_text_is_refused(key: rsa.RSAPrivateKey) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    ec_pem = ec_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    for text in ["", "   \n", "not a key", "QUJD", ec_pem, private_pem, "ключ"]:
        with pytest.raises(ValueError):
            load_public_key(text)


def test_merchant_with_two_keys_verifies_either(
    key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey
) -> None:
    gw = make_gateway({MCHID: [other_key, key]})
    for private in (key, other_key):
        body, headers = notify(GoPaySigner(private))
        assert gw.parse(inbound(body, headers)).merchant_id == MCHID
    stranger = new_rsa_key()
    body, headers = notify(GoPaySigner(stranger))
    assert rejected(gw, body, headers).outcome is Outcome.BAD_SIGNATURE


def write_key(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def config_with(*paths: Path, mchid: str = MCHID) -> GoPayConfig:
    return GoPayConfig(merchants=(GoPayMerchant(mchid=mchid, platform_public_keys=paths),))


def test_from_config_loads_every_format(tmp_path: Path, key: rsa.RSAPrivateKey) -> None:
    paths = [
        write_key(tmp_path, f"k.{fmt}", public_key_text(key, fmt))
        for fmt in ("spki_pem", "pkcs1_pem", "base64")
    ]
    gw = GoPayGateway.from_config(config_with(*paths), source="receiver.toml")
    assert [spki_der(k) for k in gw.merchants[MCHID]] == [spki_der(key.public_key())] * 3
    assert gw.timestamp_tolerance_s == 900


def denied_key_text() -> str:
    text = resources.files("receiver.data").joinpath("gopay_denied_keys.txt").read_text()
    return next(line for line in text.splitlines() if line and not line.startswith("#"))


def test_deny_listed_key_is_refused_by_from_config(tmp_path: Path, key: rsa.RSAPrivateKey) -> None:
    good = write_key(tmp_path, "good.pem", public_key_text(key, "spki_pem"))
    denied_b64 = denied_key_text()
    denied_pem = public_key_text(load_public_key(denied_b64), "pkcs1_pem")
    for text in (denied_b64, denied_pem):
        bad = write_key(tmp_path, "default.pem", text)
        with pytest.raises(ConfigError) as info:
            GoPayGateway.from_config(config_with(good, bad), source="receiver.toml")
        error = info.value
        assert error.source == "receiver.toml"
        assert error.key == "gopay.merchants[0].platform_public_keys[1]"
        assert "anyone can sign with it" in error.problem
        assert denied_b64[60:90] not in str(error)


def test_short_key_is_refused(tmp_path: Path) -> None:
    short = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    path = write_key(tmp_path, "short.pem", public_key_text(short, "base64"))
    with pytest.raises(ConfigError) as info:
        GoPayGateway.from_config(config_with(path), source="x.toml")
    assert info.value.key == "gopay.merchants[0].platform_public_keys[0]"
    assert "1024 bits" in info.value.problem


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "cannot read"),
        ("hello", "not an RSA public key"),
        (b"\xff\xfe\x00binary", "not an RSA public key"),
    ],
)
def test_unusable_key_file_is_a_config_error(
    tmp_path: Path, content: str | bytes | None, problem: str
) -> None:
    path = tmp_path / "k.pem"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as info:
        GoPayGateway.from_config(config_with(path), source="x.toml")
    assert problem in info.value.problem
    assert info.value.key == "gopay.merchants[0].platform_public_keys[0]"


# --- merchants --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ids",
    [{"mid": 200001}, {"mid": "200001"}, {"mchid": "200001"}, {"mid": 200001, "mchid": "200001"}],
)
def test_merchant_id_as_number_or_string(
    signer: GoPaySigner, key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey, ids: dict[str, Any]
) -> None:
    gw = make_gateway({MCHID: [key], "300001": [other_key]})
    body, headers = notify(signer, with_charge(**{"mid": _ABSENT, **ids}))
    assert gw.parse(inbound(body, headers)).merchant_id == MCHID


def test_absent_merchant_id_means_the_single_merchant(
    gateway: GoPayGateway, signer: GoPaySigner
) -> None:
    body, headers = notify(signer, with_charge(mid=_ABSENT))
    assert gateway.parse(inbound(body, headers)).merchant_id == MCHID


def test_absent_merchant_id_with_two_merchants_is_unknown_merchant(
    signer: GoPaySigner, key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey
) -> None:
    gw = make_gateway({MCHID: [key], "300001": [other_key]})
    body, headers = notify(signer, with_charge(mid=_ABSENT))
    error = rejected(gw, body, headers)
    assert error.outcome is Outcome.UNKNOWN_MERCHANT
    assert error.out_trade_no == CHARGE["out_trade_no"]


def test_unknown_merchant_is_recorded_with_the_claimed_id(
    gateway: GoPayGateway, signer: GoPaySigner
) -> None:
    body, headers = notify(signer, with_charge(mid=999))
    error = rejected(gateway, body, headers)
    assert error.outcome is Outcome.UNKNOWN_MERCHANT
    assert (error.merchant_id, error.out_trade_no) == ("999", CHARGE["out_trade_no"])


@pytest.mark.parametrize(
    "ids", [{"mid": 200001, "mchid": "300001"}, {"mid": ""}, {"mid": True}, {"mid": [1]}]
)
def test_unusable_merchant_id_is_malformed(
    gateway: GoPayGateway, signer: GoPaySigner, ids: dict[str, Any]
) -> None:
    body, headers = notify(signer, with_charge(**{"mid": _ABSENT, **ids}))
    assert rejected(gateway, body, headers).outcome is Outcome.MALFORMED


# --- business fields --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "minor"),
    [
        ("100.000", 10000),
        ("100", 10000),
        ("1.66", 166),
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
    ("amounts", "paid", "order"),
    [
        ({"amount": "1.660", "pay_amount": "1.66"}, 166, 166),
        ({"amount": "100.000", "pay_amount": "99.500"}, 9950, 10000),
        ({"amount": "1.660", "pay_amount": _ABSENT}, 166, 166),
        ({"amount": 3, "pay_amount": _ABSENT}, 300, 300),
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
        b'{"result_code":"OK",'
        b'"charge":{"out_trade_no":"A1","amount":1.66,"pay_amount":1e2,"currency":"CNY"}}'
    )
    error = rejected(gateway, body, signed_body(signer, body))
    assert error.outcome is Outcome.MALFORMED and "pay_amount" in error.reason


@pytest.mark.parametrize(
    "changes",
    [
        {"amount": "1.665"},
        {"amount": "-1"},
        {"amount": "1e3"},
        {"amount": _ABSENT},
        {"pay_amount": "NaN"},
        {"pay_amount": None},
        {"currency": _ABSENT},
        {"currency": "cny"},
        {"currency": "CNYX"},
        {"currency": 156},
        {"out_trade_no": _ABSENT},
        {"out_trade_no": ""},
        {"out_trade_no": None},
        {"out_trade_no": Decimal("1.5")},
        {"in_trade_no": {"x": 1}},
        {"status": 4},
        {"status": "paid"},
        {"status": None},
        {"status": True},
        {"status": Decimal("2.0")},
        {"status": "-1"},
    ],
)
def test_bad_business_fields_are_malformed(
    gateway: GoPayGateway, signer: GoPaySigner, changes: dict[str, Any]
) -> None:
    body, headers = notify(signer, with_charge(**changes))
    error = rejected(gateway, body, headers)
    assert error.outcome is Outcome.MALFORMED
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
        (_ABSENT, Status.PAID),
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
        ({"in_trade_no": _ABSENT}, None),
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
    assert (info.value.outcome, info.value.refusal) == (Outcome.MALFORMED, 415)


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


# --- freshness --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1617583668305", Decimal("1617583668.305")),
        ("1617583668305123", Decimal("1617583668.305123")),
        ("1617583668305123456", Decimal("1617583668.305123456")),
        ("1.58600995149E+12", Decimal("1586009951.49")),
        ("1.58600995149e12", Decimal("1586009951.49")),
        ("1.58600995149e+12", Decimal("1586009951.49")),
        ("1.58600995149E12", Decimal("1586009951.49")),
        ("1795591510237.1", Decimal("1795591510.2371")),  # PHP's default precision, 14
        ("1795591510237.0", Decimal("1795591510.237")),
        ("1617583668305123.5", Decimal("1617583668.3051235")),
        ("1.617583668305123E+15", Decimal("1617583668.305123")),  # us, written as exponent
        ("1.6175836683051235E+18", Decimal("1617583668.3051235")),  # ns, written as exponent
        ("16175836683.05E+2", Decimal("1617583668.305")),  # magnitude, not spelling, says ms
        ("9999999999999", Decimal("9999999999.999")),  # the top of the ms range
        ("1000000000000", Decimal("1000000000")),  # the bottom of the ms range
    ],
)
def test_timestamp_formats(text: str, seconds: Decimal) -> None:
    assert parse_timestamp(text) == seconds


@pytest.mark.parametrize(
    "text",
    [
        "1617583668",  # seconds: magnitude 10^9
        "16175836683050",  # magnitude 10^13: neither ms nor us
        "999999999999",  # just under 10^12
        "99999999999999.9",  # just under 10^14, still 10^13
        "",
        "abc",
        "-1617583668305",
        "+1617583668305",
        "1.5E+999",
        "1E+100",
        "1.617583668305E-12",
        "1.617583668305E+012",
        "NaN",
        "nan",
        "Infinity",
        "inf",
        "0",
        "0.0E+0",
        " 1617583668305",
        "1617583668305 ",
        "1_617_583_668_305",
        "1617583668305.",
        ".1617583668305E+13",
        "1.617583668305E",
        "1,617583668305",
        "0x178A1B2C3D4",
        "\uff11" * 13,
        "1" * 100,
    ],
)
def test_unparsable_timestamps(text: str) -> None:
    with pytest.raises(ValueError):
        parse_timestamp(text)


@given(text=st.text(max_size=40) | st.from_regex(r"[0-9.eE+-]{0,30}", fullmatch=True))
def test_timestamp_parse_is_a_recent_epoch_or_value_error(text: str) -> None:
    try:
        seconds = parse_timestamp(text)
    except ValueError:
        return
    # Magnitudes 10^12, 10^15 and 10^18 all land between 2001-09-09 and 2286-11-20.
    assert Decimal(10**9) <= seconds < Decimal(10**10)


@pytest.mark.parametrize(
    "timestamp",
    [
        "1617583668305",
        "1617583668305000",
        "1617583668305000000",
        "1.617583668305E+12",
        "1.6175836683E+12",
        "1.6175836683e12",
        "1617583668305.1",
        "1617583668305000.25",
    ],
)
def test_every_timestamp_format_is_fresh(
    key: rsa.RSAPrivateKey, signer: GoPaySigner, timestamp: str
) -> None:
    gw = make_gateway({MCHID: [key]}, tolerance=60)
    body, headers = notify(signer, timestamp=timestamp, nonce="N1")
    n = gw.parse(inbound(body, headers))
    assert (n.nonce, n.signed_headers["x-ca-timestamp"]) == ("N1", timestamp)


@pytest.mark.parametrize("offset_s", [-900.001, 900.001, -86400 * 365, 86400 * 365])
def test_timestamp_outside_tolerance_is_expired(
    key: rsa.RSAPrivateKey, signer: GoPaySigner, offset_s: float
) -> None:
    gw = make_gateway({MCHID: [key]}, tolerance=900, now=NOW + offset_s)
    body, headers = notify(signer)
    error = rejected(gw, body, headers)
    assert error.outcome is Outcome.EXPIRED
    assert (error.merchant_id, error.out_trade_no) == (MCHID, CHARGE["out_trade_no"])


@pytest.mark.parametrize("offset_s", [-899.999, 899.999, 0])
def test_timestamp_at_the_edge_of_tolerance_is_fresh(
    key: rsa.RSAPrivateKey, signer: GoPaySigner, offset_s: float
) -> None:
    gw = make_gateway({MCHID: [key]}, tolerance=900, now=NOW + offset_s)
    body, headers = notify(signer)
    assert gw.parse(inbound(body, headers)).nonce == headers["X-Ca-Noncestr"]


def test_unparsable_timestamp_is_malformed_after_verifying(
    gateway: GoPayGateway, signer: GoPaySigner
) -> None:
    body, headers = notify(signer, timestamp="yesterday")
    assert rejected(gateway, body, headers).outcome is Outcome.MALFORMED


@pytest.mark.parametrize("timestamp", ["1000000000000", "yesterday"])
def test_tolerance_zero_turns_freshness_and_nonce_off(
    key: rsa.RSAPrivateKey, signer: GoPaySigner, timestamp: str
) -> None:
    gw = make_gateway({MCHID: [key]}, tolerance=0)
    body, headers = notify(signer, timestamp=timestamp)
    n = gw.parse(inbound(body, headers))
    assert n.nonce is None and n.signed_headers["x-ca-timestamp"] == timestamp


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


@pytest.mark.parametrize(
    "channel", ["gopay_banktransfer", "gopay_payout ", "GOPAY_PAYOUT", _ABSENT]
)
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


# --- replies ----------------------------------------------------------------------------------


@pytest.mark.parametrize("outcome", [*Outcome, *Refusal])
def test_reply_bytes(gateway: GoPayGateway, outcome: Outcome | Refusal) -> None:
    r = reply(gateway.dialect, outcome)
    accepted = isinstance(outcome, Outcome) and outcome.accepted
    expected = (
        b'{"result_code":"OK","result_msg":"SUCCESS"}'
        if accepted
        else (b'{"result_code":"OK","result_msg":"FAIL"}')
    )
    assert (r.body, r.content_type) == (expected, "application/json")
    assert r.body in (SUCCESS_BODY, FAIL_BODY)


@pytest.mark.parametrize(
    ("outcome", "status"),
    [
        (Outcome.APPLIED, 200),
        (Outcome.NOOP, 200),
        (Outcome.STALE, 200),
        (Outcome.MALFORMED, 400),
        (Outcome.BAD_SIGNATURE, 401),
        (Outcome.EXPIRED, 401),
        (Outcome.UNKNOWN_MERCHANT, 403),
        (Outcome.UNKNOWN_ORDER, 404),
        (Outcome.AMOUNT_MISMATCH, 422),
        (Refusal.TOO_MANY_UNVERIFIED, 429),
        (Refusal.DATABASE_UNAVAILABLE, 503),
    ],
)
def test_reply_status(gateway: GoPayGateway, outcome: Outcome | Refusal, status: int) -> None:
    assert reply(gateway.dialect, outcome).status == status


# --- properties -------------------------------------------------------------------------------

PROPERTY_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
SIGNED_NONCE = "963613FA553D6405C6E0D345BA32B6DB"
PROPERTY_CHARGE = with_charge(mid=_ABSENT)  # no mid: a changed byte cannot pick a merchant


@pytest.fixture(scope="module")
def signed_notification(signer: GoPaySigner) -> tuple[bytes, dict[str, str]]:
    return notify(signer, PROPERTY_CHARGE, nonce=SIGNED_NONCE)


@PROPERTY_SETTINGS
@given(data=st.data())
def test_any_byte_change_in_the_charge_span_fails(
    gateway: GoPayGateway,
    signed_notification: tuple[bytes, dict[str, str]],
    data: st.DataObject,
) -> None:
    body, headers = signed_notification
    start, end = find_charge_span(body)
    index = data.draw(st.integers(start, end - 1), label="index")
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != body[index]), label="byte")
    forged = body[:index] + bytes([byte]) + body[index + 1 :]
    error = rejected(gateway, forged, headers)
    assert error.outcome in {Outcome.BAD_SIGNATURE, Outcome.MALFORMED}


@PROPERTY_SETTINGS
@given(data=st.data())
def test_any_change_in_a_signed_header_fails(
    gateway: GoPayGateway,
    signed_notification: tuple[bytes, dict[str, str]],
    data: st.DataObject,
) -> None:
    body, headers = signed_notification
    name = data.draw(st.sampled_from(["X-Ca-Noncestr", "X-Ca-Timestamp", "X-Ca-Signature"]))
    value = headers[name]
    index = data.draw(st.integers(0, len(value) - 1), label="index")
    printable = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
    char = data.draw(printable.filter(lambda c: c != value[index]), label="char")
    changed = {**headers, name: value[:index] + char + value[index + 1 :]}
    error = rejected(gateway, body, changed)
    assert error.outcome in {Outcome.BAD_SIGNATURE, Outcome.MALFORMED}


def parse_or_reject(gw: GoPayGateway, body: bytes, headers: Mapping[str, str]) -> None:
    """Calls parse; anything but a Notification or Rejected fails the test."""
    try:
        result = gw.parse(inbound(body, headers))
    except Rejected as error:
        assert isinstance(error.outcome, Outcome)
    else:
        assert isinstance(result, Notification)


header_dicts = st.dictionaries(
    st.one_of(
        st.sampled_from(["X-Ca-Noncestr", "x-ca-timestamp", "X-CA-SIGNATURE", "Content-Type"]),
        st.text(max_size=20),
    ),
    st.one_of(st.text(max_size=40), st.from_regex(r"[A-Za-z0-9+/]{0,400}={0,2}", fullmatch=True)),
    max_size=5,
)


@PROPERTY_SETTINGS
@given(body=st.binary(max_size=2000), headers=header_dicts)
def test_arbitrary_bytes_and_headers_only_raise_rejected(
    gateway: GoPayGateway, body: bytes, headers: dict[str, str]
) -> None:
    parse_or_reject(gateway, body, headers)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.decimals(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
charge_fields = st.sampled_from(
    [
        "mid",
        "mchid",
        "out_trade_no",
        "trade_no",
        "in_trade_no",
        "amount",
        "pay_amount",
        "currency",
        "status",
        "channel",
    ]
)
json_charges = st.dictionaries(
    charge_fields | st.text(max_size=8),
    json_values | st.sampled_from(["1.66", "100.000", "CNY", "2", MCHID, 200001]),
    max_size=10,
)


@PROPERTY_SETTINGS
@given(charge=json_charges, base64_step=st.booleans())
def test_signed_arbitrary_charges_only_raise_rejected(
    gateway: GoPayGateway, signer: GoPaySigner, charge: dict[str, Any], base64_step: bool
) -> None:
    body, headers = notify(signer, charge, base64_step=base64_step)
    parse_or_reject(gateway, body, headers)


@PROPERTY_SETTINGS
@given(
    top=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    charge=json_charges,
    headers=header_dicts,
)
def test_json_bodies_with_unsigned_headers_only_raise_rejected(
    gateway: GoPayGateway, top: dict[str, Any], charge: dict[str, Any], headers: dict[str, str]
) -> None:
    top["charge"] = charge
    for dumps in (php_json_encode, _pretty_json):
        parse_or_reject(gateway, dumps(top), headers)


def _pretty_json(value: Any) -> bytes:
    return json.dumps(value, indent=1, ensure_ascii=False, default=str).encode()


@pytest.mark.parametrize(
    "body", [b"[" * 60000, b'{"charge":' + b"[" * 60000, b'{"charge":{"a":' + b"[" * 60000]
)
def test_deeply_nested_bodies_are_malformed(
    gateway: GoPayGateway, signer: GoPaySigner, body: bytes
) -> None:
    body_headers = notify(signer)[1]
    assert rejected(gateway, body, body_headers).outcome is Outcome.MALFORMED


def test_deeply_nested_but_complete_charge_is_malformed(
    gateway: GoPayGateway, signer: GoPaySigner
) -> None:
    body = b'{"charge":{"a":' + b"[" * 30000 + b"]" * 30000 + b"}}"
    assert rejected(gateway, body, signed_body(signer, body)).outcome is Outcome.MALFORMED
