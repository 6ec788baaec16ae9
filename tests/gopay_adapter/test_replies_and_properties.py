"""The GoPay adapter: the reply bytes, and properties over any signed charge."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from receiver.core.notification import Notification, Outcome, Status
from receiver.errors import ConfigError, Rejected
from receiver.gateways import with_signature_headers
from receiver.gateways.gopay import (
    FAIL_BODY,
    SUCCESS_BODY,
    GoPayGateway,
    find_charge_span,
    spki_der,
)
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
from receiver.http.replies import Refusal, reply
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
    write_key,
)
from tests.support.gopay_signer import GoPaySigner, new_rsa_key, php_json_encode

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
PROPERTY_CHARGE = with_charge(mid=ABSENT)  # no mid: a changed byte cannot pick a merchant


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
    assert error.media_type in {False, True}


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
