"""The GoPay adapter: the signature over the raw bytes, and the platform keys."""

from __future__ import annotations

import base64
import ipaddress
import json
from decimal import Decimal
from importlib import resources
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from receiver.config import GoPayConfig, GoPayMerchant
from receiver.core.notification import Notification, Outcome, Status
from receiver.errors import ConfigError
from receiver.gateways.gopay import (
    GoPayGateway,
    load_public_key,
    spki_der,
)
from tests.support.gopay_adapter import (
    CHARGE,
    MCHID,
    NOW_MS,
    inbound,
    make_gateway,
    notify,
    rejected,
    signed_body,
    span_text,
    with_charge,
    write_key,
)
from tests.support.gopay_signer import GoPaySigner, new_rsa_key, public_key_text

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
