"""Unit tests of the GoPay adapter: pure bytes in, Notification or Rejected out."""

from __future__ import annotations

import base64
import ipaddress
import json
import time
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
from receiver.gateways import Gateway, Refusal, reply, with_signature_headers
from receiver.gateways.gopay import (
    FAIL_BODY,
    SUCCESS_BODY,
    GoPayGateway,
    find_charge_span,
    load_public_key,
    parse_amount_minor,
    parse_timestamp,
    read_charge,
    spki_der,
)
from receiver.gateways.gopay.notify import parse_status
from receiver.gateways.gopay.signing import (
    SignatureHeaders,
    load_private_key,
    load_private_key_file,
    new_nonce,
    now_ms,
    sign_charge,
    sign_request,
    verify_request,
    verify_signature,
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
    top = {"result_code": "OK", "result_msg": "SUCCESS", "charge": CHARGE}
    body = json.dumps(top, indent=2).encode()
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


@pytest.mark.parametrize(
    ("signature", "reason"),
    [
        ("not base64!", "x-ca-signature is not base64"),
        ("QUJD!", "x-ca-signature is not base64"),
        ("QU JD", "x-ca-signature is not base64"),
        ("YR==", "x-ca-signature is not canonical base64"),
        ("  ", "x-ca-signature is not canonical base64"),
    ],
)
def test_signature_text_refusals_say_why(
    gateway: GoPayGateway, signer: GoPaySigner, signature: str, reason: str
) -> None:
    body, headers = notify(signer)
    headers["X-Ca-Signature"] = signature
    error = rejected(gateway, body, headers)
    assert (error.outcome, error.reason) == (Outcome.BAD_SIGNATURE, reason)


@pytest.mark.parametrize("name", ["X-Ca-Noncestr", "X-Ca-Timestamp", "X-Ca-Signature"])
def test_non_ascii_signature_header_is_bad_signature(
    gateway: GoPayGateway, signer: GoPaySigner, name: str
) -> None:
    body, headers = notify(signer)
    headers[name] = "Ä" + headers[name]
    error = rejected(gateway, body, headers)
    assert (error.outcome, error.reason) == (
        Outcome.BAD_SIGNATURE,
        f"{name.lower()} header is not ASCII",
    )


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


def test_bare_base64_key_split_over_lines_loads(key: rsa.RSAPrivateKey) -> None:
    one_line = public_key_text(key, "base64").strip()
    lines = "\n".join(one_line[i : i + 64] for i in range(0, len(one_line), 64))
    assert spki_der(load_public_key(lines)) == spki_der(key.public_key())


@pytest.mark.parametrize("stray", ["*", "!", "."])
def test_bare_base64_key_with_a_stray_character_is_refused_not_repaired(
    key: rsa.RSAPrivateKey, stray: str
) -> None:
    one_line = public_key_text(key, "base64").strip()
    with pytest.raises(ValueError):
        load_public_key(one_line[:100] + stray + one_line[100:])


@pytest.mark.parametrize(
    ("text", "message"),
    [("  \n ", "empty key text"), ("QUJD", "not a public key")],
)
def test_key_text_errors_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        load_public_key(text)


def test_ec_key_is_not_an_rsa_public_key() -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = ec_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    with pytest.raises(ValueError, match=r"^not an RSA public key$"):
        load_public_key(pem)


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
    assert info.value.source == "x.toml"


def test_missing_key_file_says_why_it_cannot_be_read(tmp_path: Path) -> None:
    path = tmp_path / "absent.pem"
    with pytest.raises(ConfigError) as info:
        GoPayGateway.from_config(config_with(path), source="x.toml")
    assert info.value.problem == f"cannot read {path}: No such file or directory"


def test_from_config_keeps_allowed_ips(tmp_path: Path, key: rsa.RSAPrivateKey) -> None:
    path = write_key(tmp_path, "k.pem", public_key_text(key, "spki_pem"))
    only = (ipaddress.ip_network("203.0.113.0/24"),)
    cfg = GoPayConfig(
        merchants=(GoPayMerchant(mchid=MCHID, platform_public_keys=(path,)),),
        allowed_ips=only,
        timestamp_tolerance_s=60,
    )
    gw = GoPayGateway.from_config(cfg, source="x.toml")
    assert (gw.allowed_ips, gw.timestamp_tolerance_s) == (only, 60)


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
    ("ids", "reason"),
    [
        ({"mid": 200001, "mchid": "300001"}, "mid and mchid disagree"),
        ({"mid": ""}, "mid is empty"),
        ({"mid": True}, "mid must be a string"),
        ({"mchid": [1]}, "mchid must be a string"),
    ],
)
def test_unusable_merchant_id_is_malformed(
    gateway: GoPayGateway, signer: GoPaySigner, ids: dict[str, Any], reason: str
) -> None:
    body, headers = notify(signer, with_charge(**{"mid": _ABSENT, **ids}))
    error = rejected(gateway, body, headers)
    assert (error.outcome, error.reason, error.merchant_id) == (Outcome.MALFORMED, reason, None)
    assert error.out_trade_no == CHARGE["out_trade_no"]


@pytest.mark.parametrize(
    ("merchants", "mid", "reason"),
    [
        ([MCHID, "300001"], _ABSENT, "charge names no merchant (mid)"),
        ([MCHID], 999, "merchant is not configured"),
    ],
)
def test_unknown_merchant_reasons(
    key: rsa.RSAPrivateKey, signer: GoPaySigner, merchants: list[str], mid: object, reason: str
) -> None:
    gw = make_gateway({m: [key] for m in merchants})
    body, headers = notify(signer, with_charge(mid=mid))
    error = rejected(gw, body, headers)
    assert (error.outcome, error.reason) == (Outcome.UNKNOWN_MERCHANT, reason)


def test_refusal_before_the_merchant_is_known_names_the_single_merchant(
    gateway: GoPayGateway, signer: GoPaySigner
) -> None:
    body, headers = notify(signer, with_charge(mid=_ABSENT))
    del headers["X-Ca-Signature"]
    assert rejected(gateway, body, headers).merchant_id == MCHID


def test_refusal_before_the_merchant_is_known_names_none_of_two_merchants(
    key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey, signer: GoPaySigner
) -> None:
    gw = make_gateway({MCHID: [key], "300001": [other_key]})
    body, headers = notify(signer, with_charge(mid=_ABSENT))
    del headers["X-Ca-Signature"]
    assert rejected(gw, body, headers).merchant_id is None


def test_bad_signature_names_a_long_configured_merchant_in_full(
    other_key: rsa.RSAPrivateKey, signer: GoPaySigner
) -> None:
    long_id = "M" * 70
    gw = make_gateway({long_id: [other_key]})
    body, headers = notify(signer, with_charge(mid=long_id))
    error = rejected(gw, body, headers)
    assert (error.outcome, error.merchant_id) == (Outcome.BAD_SIGNATURE, long_id)
    assert error.reason == "signature does not verify with any of the merchant's platform keys"


@pytest.mark.parametrize(
    ("out_trade_no", "hint"),
    [
        (_ABSENT, None),
        (None, None),
        ("", None),
        ([1], None),
        (True, None),
        (123, "123"),
        ("O" * 70, "O" * 64),
        (10**70, "1" + "0" * 63),
    ],
)
def test_unverified_order_number_is_kept_short_for_the_record(
    gateway: GoPayGateway, other_key: rsa.RSAPrivateKey, out_trade_no: object, hint: str | None
) -> None:
    body, headers = notify(GoPaySigner(other_key), with_charge(out_trade_no=out_trade_no))
    error = rejected(gateway, body, headers)
    assert (error.outcome, error.out_trade_no) == (Outcome.BAD_SIGNATURE, hint)


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
        ({"amount": _ABSENT}, "amount is missing"),
        ({"pay_amount": "NaN"}, PAY_AMOUNT_REASON),
        ({"pay_amount": None}, PAY_AMOUNT_REASON),
        ({"currency": _ABSENT}, CURRENCY_REASON),
        ({"currency": "cny"}, CURRENCY_REASON),
        ({"currency": "CNYX"}, CURRENCY_REASON),
        ({"currency": 156}, CURRENCY_REASON),
        ({"out_trade_no": _ABSENT}, "out_trade_no is missing or empty"),
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
    assert (info.value.outcome, info.value.refusal, info.value.reason) == (
        Outcome.MALFORMED,
        415,
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


EXACT_MS = 1617583668000  # a whole second: the clock can equal it exactly as a float


@pytest.mark.parametrize(("tolerance", "offset_s"), [(1, 1), (1, -1), (900, 900), (900, -900)])
def test_skew_exactly_equal_to_the_tolerance_is_fresh(
    key: rsa.RSAPrivateKey, signer: GoPaySigner, tolerance: int, offset_s: int
) -> None:
    gw = make_gateway({MCHID: [key]}, tolerance=tolerance, now=EXACT_MS / 1000 + offset_s)
    body, headers = notify(signer, timestamp=str(EXACT_MS), nonce="N1")
    assert gw.parse(inbound(body, headers)).nonce == "N1"


@pytest.mark.parametrize("offset_s", [1.001, -1.001, 2, -2])
def test_tolerance_of_one_second_still_checks_freshness(
    key: rsa.RSAPrivateKey, signer: GoPaySigner, offset_s: float
) -> None:
    gw = make_gateway({MCHID: [key]}, tolerance=1, now=EXACT_MS / 1000 + offset_s)
    body, headers = notify(signer, timestamp=str(EXACT_MS))
    error = rejected(gw, body, headers)
    assert (error.outcome, error.reason) == (
        Outcome.EXPIRED,
        "x-ca-timestamp is outside the accepted window",
    )


def test_unparsable_timestamp_reason(gateway: GoPayGateway, signer: GoPaySigner) -> None:
    body, headers = notify(signer, timestamp="1617583668")
    error = rejected(gateway, body, headers)
    assert (error.outcome, error.reason) == (
        Outcome.MALFORMED,
        "x-ca-timestamp is not an epoch in ms, us or ns",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [("abc", "not an epoch timestamp"), ("1617583668", "not an epoch in ms, us or ns")],
)
def test_timestamp_errors_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        parse_timestamp(text)


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


UNSIGNED_REFUSALS = {Outcome.MALFORMED, Outcome.BAD_SIGNATURE, Outcome.UNKNOWN_MERCHANT}


def refused_with_a_typed_reason(error: Rejected, allowed: set[Outcome]) -> None:
    """A refusal says which outcome and why, in words, and never quotes the signature."""
    assert error.outcome in allowed
    assert isinstance(error.reason, str) and error.reason
    assert error.refusal in {None, 415}


def never_accepted(gw: GoPayGateway, body: bytes, headers: Mapping[str, str]) -> None:
    """Without a signature over its charge, a body is refused, whatever it holds."""
    with pytest.raises(Rejected) as info:
        gw.parse(inbound(body, headers))
    refused_with_a_typed_reason(info.value, UNSIGNED_REFUSALS)


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
def test_arbitrary_bytes_and_headers_are_always_refused_with_a_reason(
    gateway: GoPayGateway, body: bytes, headers: dict[str, str]
) -> None:
    never_accepted(gateway, body, headers)


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
TARGETS = {0: Status.CLOSED, 1: None, 2: Status.PAID, 3: Status.FAILED}


def minor_units(value: object) -> int:
    """The test's own reading of a valid amount: its decimal value times 100."""
    return int(Decimal(str(value)) * 100)


def notification_of(charge: Mapping[str, Any], headers: Mapping[str, str]) -> Notification:
    """The notification a verified, valid `charge` must come to, field by field."""
    paid = charge.get("pay_amount", charge["amount"])
    return Notification(
        provider="gopay",
        merchant_id=MCHID,
        out_trade_no=str(charge["out_trade_no"]),
        target=TARGETS[int(charge.get("status", 2))],
        paid_amount_minor=minor_units(paid),
        order_amount_minor=minor_units(charge["amount"]),
        currency=charge["currency"],
        provider_trade_no=charge.get("trade_no") or charge.get("in_trade_no") or None,
        nonce=headers["X-Ca-Noncestr"],
        signed_headers={k.lower(): v for k, v in headers.items() if k.lower().startswith("x-ca")},
        payout=charge.get("channel") == "gopay_payout",
        detail="signature=base64",
        paid_amount_stated="pay_amount" in charge,
    )


identifiers = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=128
)
amounts = st.integers(0, 10**17 - 1).flatmap(
    lambda fen: st.sampled_from(
        [f"{fen // 100}.{fen % 100:02d}", f"{fen // 100}.{fen % 100:02d}0", fen // 100]
    )
)
valid_charges = st.fixed_dictionaries(
    {
        "out_trade_no": identifiers | st.integers(0, 10**20),
        "amount": amounts,
        "currency": st.sampled_from(["CNY", "INR"]),
    },
    optional={
        "mid": st.sampled_from([MCHID, int(MCHID)]),
        "pay_amount": amounts,
        "status": st.sampled_from([0, 1, 2, 3, "0", "1", "2", "3"]),
        "channel": st.sampled_from(["gopay_banktransfer", "gopay_bankupi", "gopay_payout"]),
        "trade_no": identifiers,
        "subject": st.text(max_size=20),
        "extparam": json_values,
    },
)


@PROPERTY_SETTINGS
@given(charge=valid_charges)
def test_a_signed_valid_charge_comes_to_exactly_its_fields(
    gateway: GoPayGateway, signer: GoPaySigner, charge: dict[str, Any]
) -> None:
    body, headers = notify(signer, charge)
    del headers["Content-Type"]
    assert gateway.parse(inbound(body, headers)) == notification_of(charge, headers)


@PROPERTY_SETTINGS
@given(charge=json_charges, base64_step=st.booleans())
def test_a_signed_arbitrary_charge_comes_to_its_fields_or_a_typed_refusal(
    gateway: GoPayGateway, signer: GoPaySigner, charge: dict[str, Any], base64_step: bool
) -> None:
    body, headers = notify(signer, charge, base64_step=base64_step)
    try:
        n = gateway.parse(inbound(body, headers))
    except Rejected as error:
        refused_with_a_typed_reason(error, {Outcome.MALFORMED, Outcome.UNKNOWN_MERCHANT})
        return
    assert n.merchant_id == MCHID
    assert n.out_trade_no == str(charge["out_trade_no"])
    assert n.order_amount_minor == minor_units(charge["amount"])
    assert n.paid_amount_minor == minor_units(charge.get("pay_amount", charge["amount"]))
    assert (n.currency, n.target) == (charge["currency"], TARGETS[int(charge.get("status", 2))])
    assert n.detail == f"signature={'base64' if base64_step else 'plain'}"


@PROPERTY_SETTINGS
@given(
    top=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    charge=json_charges,
    headers=header_dicts,
)
def test_json_bodies_with_unsigned_headers_are_always_refused(
    gateway: GoPayGateway, top: dict[str, Any], charge: dict[str, Any], headers: dict[str, str]
) -> None:
    top["charge"] = charge
    for dumps in (php_json_encode, _pretty_json):
        never_accepted(gateway, dumps(top), headers)


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


def test_a_refusal_keeps_the_signature_headers_that_came(
    gateway: GoPayGateway, signer: GoPaySigner
) -> None:
    body, headers = notify(signer)
    del headers["X-Ca-Signature"]
    refusal = Rejected(Outcome.IP_DENIED, "source address not allowed")
    kept = with_signature_headers(gateway, inbound(body, headers), refusal)
    assert kept is refusal
    assert kept.headers == {
        "x-ca-noncestr": headers["X-Ca-Noncestr"],
        "x-ca-timestamp": headers["X-Ca-Timestamp"],
    }


def test_a_refusal_that_names_its_headers_keeps_them(
    gateway: GoPayGateway, signer: GoPaySigner
) -> None:
    body, headers = notify(signer)
    refusal = Rejected(Outcome.MALFORMED, "x", headers={"x-ca-noncestr": "N"})
    assert with_signature_headers(gateway, inbound(body, headers), refusal).headers == {
        "x-ca-noncestr": "N"
    }


# --- the asking side's keys and values (order queries, the stand-in platform) -----------------


def test_new_nonces_are_32_random_upper_case_hex_characters() -> None:
    nonces = {new_nonce() for _ in range(20)}
    assert len(nonces) == 20
    assert all(len(n) == 32 and n == n.upper() and int(n, 16) >= 0 for n in nonces)


def test_now_ms_is_the_current_epoch_in_milliseconds() -> None:
    before = int(time.time() * 1000)
    stamp = now_ms()
    after = int(time.time() * 1000)
    assert stamp.isdigit() and before <= int(stamp) <= after


def test_sign_charge_signs_the_base64_of_the_text_by_default(key: rsa.RSAPrivateKey) -> None:
    charge = php_json_encode(CHARGE)
    signature = sign_charge(key, nonce="N1", timestamp=str(NOW_MS), charge=charge)
    headers = SignatureHeaders(nonce="N1", timestamp=str(NOW_MS), signature=signature)
    assert verify_signature([key.public_key()], headers=headers, charge=charge) == "base64"


def _private_pem(private: Any, encryption: Any = None) -> str:
    return private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        encryption or serialization.NoEncryption(),
    ).decode()


def test_private_key_errors_say_what_is_wrong(key: rsa.RSAPrivateKey) -> None:
    encrypted = _private_pem(key, serialization.BestAvailableEncryption(b"pw"))
    with pytest.raises(ValueError, match=r"^not a private key$"):
        load_private_key(encrypted)
    ec_pem = _private_pem(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(ValueError, match=r"^not an RSA private key$"):
        load_private_key(ec_pem)


def test_short_private_key_file_is_a_config_error_naming_its_key(tmp_path: Path) -> None:
    path = write_key(tmp_path, "short.pem", _private_pem(new_rsa_key(1024)))
    with pytest.raises(ConfigError) as info:
        load_private_key_file(path, source="x.toml", key="gopay.merchants[0].private_key")
    error = info.value
    assert (error.source, error.key) == ("x.toml", "gopay.merchants[0].private_key")
    assert error.problem == f"{path}: key is 1024 bits, shorter than 2048"


def test_unusable_private_key_file_says_it_wants_an_unencrypted_key(
    tmp_path: Path, key: rsa.RSAPrivateKey
) -> None:
    encrypted = _private_pem(key, serialization.BestAvailableEncryption(b"pw"))
    path = write_key(tmp_path, "enc.pem", encrypted)
    with pytest.raises(ConfigError) as info:
        load_private_key_file(path, source="x.toml", key="k")
    assert (info.value.source, info.value.key) == ("x.toml", "k")
    assert info.value.problem == (
        f"{path} is not an RSA unencrypted private key (PEM or one base64 line)"
    )


def test_private_key_file_loads(tmp_path: Path, key: rsa.RSAPrivateKey) -> None:
    path = write_key(tmp_path, "k.pem", _private_pem(key))
    loaded = load_private_key_file(path, source="x.toml", key="k")
    assert spki_der(loaded.public_key()) == spki_der(key.public_key())


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"path": "/pay/orderquery2"},
        {"query": "a=1"},
        {"nonce": "N2"},
        {"timestamp": "1617583668306"},
        {"body": b'{"mchid":"200001","out_trade_no":"B"}'},
    ],
)
def test_an_order_query_signature_verifies_only_over_what_was_signed(
    key: rsa.RSAPrivateKey, change: dict[str, Any]
) -> None:
    signed = {
        "path": "/pay/orderquery",
        "query": "",
        "nonce": "N1",
        "timestamp": "1617583668305",
        "body": b'{"mchid":"200001","out_trade_no":"A"}',
    }
    signature = sign_request(key, **signed)
    seen = {**signed, **change}
    headers = SignatureHeaders(
        nonce=seen["nonce"], timestamp=seen["timestamp"], signature=signature
    )
    ok = verify_request(
        key.public_key(), path=seen["path"], query=seen["query"], headers=headers, body=seen["body"]
    )
    assert ok is (change == {})


def test_an_order_query_signed_by_another_key_does_not_verify(
    key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey
) -> None:
    body = b"{}"
    signature = sign_request(key, path="/p", query="", nonce="N", timestamp="1", body=body)
    headers = SignatureHeaders(nonce="N", timestamp="1", signature=signature)
    public = other_key.public_key()
    assert verify_request(public, path="/p", query="", headers=headers, body=body) is False
