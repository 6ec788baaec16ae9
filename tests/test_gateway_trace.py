"""The gateways' traces for `receiver explain`: every check `parse` makes on a notification's
signature, with its numbers (pure, no server, no database)."""

from __future__ import annotations

import hashlib
from decimal import Decimal
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from receiver.config import BaofooMerchant
from receiver.core.notification import Inbound
from receiver.gateways.baofoo import BaofooGateway
from receiver.gateways.baofoo.signing import md5_key_fingerprint, signed_fields
from receiver.gateways.gopay import GoPayGateway
from receiver.gateways.gopay.signing import (
    expired_reason,
    key_fingerprint,
    timestamp_skew,
    within_tolerance,
)
from tests.support.baofoo_signer import (
    MEMBER_ID,
    TERMINAL_ID,
    baofoo_fields,
    encode_form,
    sign_baofoo,
)
from tests.support.gopay_signer import GoPaySigner, new_rsa_key, php_json_encode

NOW_MS = 1617583668000  # a whole second: the float clock is exact
NOW = 1617583668.0
MCHID = "200001"
CHARGE: dict[str, Any] = {
    "mid": 200001,
    "out_trade_no": "T1",
    "amount": "100.000",
    "currency": "CNY",
    "status": 2,
}
NONCE = "ABCDEF0123456789ABCDEF0123456789"


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return new_rsa_key()


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return new_rsa_key()


def gopay(merchants: dict[str, list[rsa.RSAPrivateKey]], *, tolerance: int = 900) -> GoPayGateway:
    keys = {m: tuple(k.public_key() for k in ks) for m, ks in merchants.items()}
    return GoPayGateway(merchants=keys, timestamp_tolerance_s=tolerance)


def gopay_inbound(body: bytes, headers: dict[str, str]) -> Inbound:
    return Inbound("gopay", body, headers, "application/json", "utf-8", "203.0.113.7")


def signed(
    key: rsa.RSAPrivateKey, charge: dict[str, Any] = CHARGE, **kw: Any
) -> tuple[bytes, dict[str, str]]:
    kw.setdefault("timestamp", str(NOW_MS))
    body, headers = GoPaySigner(key).notify(charge, nonce=NONCE, **kw)
    return body, {name.lower(): value for name, value in headers.items()}


def text_sha256(charge: dict[str, Any] = CHARGE, timestamp: str = str(NOW_MS)) -> str:
    return hashlib.sha256(f"{NONCE}\n{timestamp}\n".encode() + php_json_encode(charge)).hexdigest()


def fingerprint(key: rsa.RSAPrivateKey) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(der).hexdigest()[:16]


def fresh(skew_s: float = 0.0, *, tolerance: int = 900, within: bool = True) -> dict[str, Any]:
    return {
        "sent": str(NOW_MS),
        "tolerance_s": tolerance,
        "skew_s": skew_s,
        "checked": tolerance > 0,
        "within": within,
    }


# --- GoPay ---------------------------------------------------------------------------------------


def test_gopay_trace_of_a_good_notification(key):
    trace = gopay({MCHID: [key]}).trace(gopay_inbound(*signed(key)), now=NOW)
    assert trace == {
        "merchants_configured": [MCHID],
        "merchant_claimed": MCHID,
        "merchant_configured": True,
        "signed_text_sha256": text_sha256(),
        "timestamp": fresh(),
        "keys_tried": [
            {"merchant": MCHID, "key": fingerprint(key), "variant": "base64", "verified": True},
            {"merchant": MCHID, "key": fingerprint(key), "variant": "plain", "verified": False},
        ],
    }


def test_gopay_trace_of_an_old_build_plain_signature(key):
    body, headers = signed(key, base64_step=False)
    trace = gopay({MCHID: [key]}).trace(gopay_inbound(body, headers), now=NOW)
    assert [(t["variant"], t["verified"]) for t in trace["keys_tried"]] == [
        ("base64", False),
        ("plain", True),
    ]


def test_gopay_trace_tries_every_key_of_the_merchant_with_each_variant(key, other_key):
    third = new_rsa_key()
    trace = gopay({MCHID: [key, other_key]}).trace(gopay_inbound(*signed(third)), now=NOW)
    assert [(t["key"], t["variant"], t["verified"]) for t in trace["keys_tried"]] == [
        (fingerprint(key), "base64", False),
        (fingerprint(other_key), "base64", False),
        (fingerprint(key), "plain", False),
        (fingerprint(other_key), "plain", False),
    ]
    assert trace["merchant_configured"] is True


def test_gopay_trace_of_an_unknown_merchant_tries_every_merchants_keys(key, other_key):
    charge = CHARGE | {"mid": "999"}
    gateway = gopay({MCHID: [key], "300003": [other_key]})
    trace = gateway.trace(gopay_inbound(*signed(other_key, charge)), now=NOW)
    assert trace["merchant_claimed"] == "999"
    assert trace["merchant_configured"] is False
    assert trace["merchants_configured"] == [MCHID, "300003"]
    assert [(t["merchant"], t["variant"], t["verified"]) for t in trace["keys_tried"]] == [
        (MCHID, "base64", False),
        (MCHID, "plain", False),
        ("300003", "base64", True),
        ("300003", "plain", False),
    ]
    assert trace["signed_text_sha256"] == text_sha256(charge)


def test_gopay_trace_of_a_known_merchant_tries_only_its_keys(key, other_key):
    gateway = gopay({MCHID: [key], "300003": [other_key]})
    trace = gateway.trace(gopay_inbound(*signed(key)), now=NOW)
    assert [(t["merchant"], t["key"]) for t in trace["keys_tried"]] == [
        (MCHID, fingerprint(key)),
        (MCHID, fingerprint(key)),
    ]


def test_gopay_trace_without_a_mid_and_one_merchant_uses_it(key):
    charge = {k: v for k, v in CHARGE.items() if k != "mid"}
    trace = gopay({MCHID: [key]}).trace(gopay_inbound(*signed(key, charge)), now=NOW)
    assert trace["merchant_claimed"] is None
    assert trace["merchant_configured"] is True
    assert [t["verified"] for t in trace["keys_tried"]] == [True, False]


def test_gopay_trace_cuts_a_long_claimed_merchant(key):
    charge = CHARGE | {"mid": "9" * 100}
    trace = gopay({MCHID: [key]}).trace(gopay_inbound(*signed(key, charge)), now=NOW)
    assert trace["merchant_claimed"] == "9" * 64


@pytest.mark.parametrize(
    ("now", "tolerance", "expected"),
    [
        (NOW + 1200, 900, fresh(-1200.0, within=False)),
        (NOW - 1200.5, 900, fresh(1200.5, within=False)),
        (NOW + 900, 900, fresh(-900.0)),
        (NOW + 1200, 0, fresh(-1200.0, tolerance=0, within=False)),
        (NOW + 1, 1, fresh(-1.0, tolerance=1)),
    ],
)
def test_gopay_trace_gives_the_skew_and_the_tolerance(key, now, tolerance, expected):
    trace = gopay({MCHID: [key]}, tolerance=tolerance).trace(gopay_inbound(*signed(key)), now=now)
    assert trace["timestamp"] == expected


def test_gopay_trace_of_an_unparsable_timestamp(key):
    body, headers = signed(key, timestamp="yesterday")
    trace = gopay({MCHID: [key]}).trace(gopay_inbound(body, headers), now=NOW)
    assert trace["timestamp"] == {
        "sent": "yesterday",
        "tolerance_s": 900,
        "problem": "x-ca-timestamp is not an epoch in ms, us or ns",
    }
    assert trace["signed_text_sha256"] == text_sha256(timestamp="yesterday")


def test_gopay_trace_of_a_missing_header(key):
    body, headers = signed(key)
    del headers["x-ca-signature"]
    trace = gopay({MCHID: [key]}).trace(gopay_inbound(body, headers), now=NOW)
    assert trace == {
        "merchants_configured": [MCHID],
        "problem": "x-ca-signature header is missing",
    }


def test_gopay_trace_of_a_body_that_is_not_json(key):
    _, headers = signed(key)
    trace = gopay({MCHID: [key]}).trace(gopay_inbound(b"not json", headers), now=NOW)
    assert set(trace) == {"merchants_configured", "problem"}
    assert trace["problem"]


def test_gopay_trace_of_a_signature_that_is_not_base64(key):
    body, headers = signed(key)
    headers["x-ca-signature"] = "***"
    trace = gopay({MCHID: [key]}).trace(gopay_inbound(body, headers), now=NOW)
    assert trace["problem"] == "x-ca-signature is not base64"
    assert "keys_tried" not in trace
    assert trace["timestamp"] == fresh()


def test_key_fingerprint_is_the_start_of_the_der_digest(key):
    assert key_fingerprint(key.public_key()) == fingerprint(key)
    assert len(fingerprint(key)) == len("sha256:") + 16


@pytest.mark.parametrize(
    ("skew", "tolerance", "ok"),
    [
        ("900", 900, True),
        ("-900", 900, True),
        ("900.001", 900, False),
        ("-900.001", 900, False),
        ("0", 0, True),
    ],
)
def test_within_tolerance_is_inclusive_both_ways(skew, tolerance, ok):
    assert within_tolerance(Decimal(skew), tolerance) is ok


def test_timestamp_skew_is_signed_seconds_from_now():
    assert timestamp_skew("1617583668305", now=1617583668.0) == Decimal("0.305")
    assert timestamp_skew("1617583668000", now=1617583669.0) == Decimal(-1)
    with pytest.raises(ValueError, match="epoch"):
        timestamp_skew("12", now=0.0)


def test_expired_reason_names_the_skew_its_direction_and_the_tolerance():
    assert expired_reason(Decimal("-1200.5"), 900) == (
        "x-ca-timestamp is 1200.500 s behind the service's clock (tolerance 900 s)"
    )
    assert expired_reason(Decimal("61.0004"), 60) == (
        "x-ca-timestamp is 61.000 s ahead of the service's clock (tolerance 60 s)"
    )
    assert expired_reason(Decimal("0.5"), 0) == (
        "x-ca-timestamp is 0.500 s ahead of the service's clock (tolerance 0 s)"
    )
    assert expired_reason(Decimal(0), 0).startswith("x-ca-timestamp is 0.000 s ahead of")


# --- Baofoo --------------------------------------------------------------------------------------

MD5_KEY = "k3y-Secret-Zz"
PAIR = f"{MEMBER_ID}/{TERMINAL_ID}"


def baofoo(*pairs: tuple[str, str, str]) -> BaofooGateway:
    pairs = pairs or ((MEMBER_ID, TERMINAL_ID, MD5_KEY),)
    merchants = [BaofooMerchant(member_id=m, terminal_id=t, md5_key=k) for m, t, k in pairs]
    return BaofooGateway(merchants)


def baofoo_inbound(body: bytes, charset: str = "utf-8", content_type: str = "") -> Inbound:
    form = content_type or "application/x-www-form-urlencoded"
    return Inbound("baofoo", body, {}, form, charset, "203.0.113.7")


def form_sha256(fields: dict[str, str], encoding: str = "utf-8") -> str:
    text = "~|~".join(
        f"{n}={fields[n]}"
        for n in (
            "MemberID",
            "TerminalID",
            "TransID",
            "Result",
            "ResultDesc",
            "FactMoney",
            "AdditionalInfo",
            "SuccTime",
        )
    )
    return hashlib.sha256(text.encode(encoding)).hexdigest()


def md5_fingerprint(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()[:8]


def test_baofoo_trace_of_a_good_notification():
    fields = baofoo_fields()
    body = encode_form(sign_baofoo(fields, MD5_KEY))
    assert baofoo().trace(baofoo_inbound(body)) == {
        "merchants_configured": [PAIR],
        "merchant_claimed": PAIR,
        "merchant_configured": True,
        "signed_text_sha256": {"utf-8": form_sha256(fields)},
        "keys_tried": [
            {
                "merchant": PAIR,
                "key": md5_fingerprint(MD5_KEY),
                "variant": "utf-8",
                "verified": True,
            }
        ],
    }


def test_baofoo_trace_with_another_key():
    body = encode_form(sign_baofoo(baofoo_fields(), "another-key-123"))
    [tried] = baofoo().trace(baofoo_inbound(body))["keys_tried"]
    assert tried == {
        "merchant": PAIR,
        "key": md5_fingerprint(MD5_KEY),
        "variant": "utf-8",
        "verified": False,
    }


def test_baofoo_trace_of_a_gbk_form_signed_over_utf8():
    fields = baofoo_fields(AdditionalInfo="充值")
    body = encode_form(sign_baofoo(fields, MD5_KEY, encoding="utf-8"), charset="gbk")
    trace = baofoo().trace(baofoo_inbound(body, charset="gbk"))
    assert trace["signed_text_sha256"] == {
        "gbk": form_sha256(fields, "gbk"),
        "utf-8": form_sha256(fields, "utf-8"),
    }
    assert [(t["variant"], t["verified"]) for t in trace["keys_tried"]] == [
        ("gbk", False),
        ("utf-8", True),
    ]


def test_baofoo_trace_of_an_unknown_pair_tries_every_key():
    body = encode_form(sign_baofoo(baofoo_fields(TerminalID="2"), "key-two-22"))
    gateway = baofoo((MEMBER_ID, TERMINAL_ID, MD5_KEY), ("555", "5", "key-two-22"))
    trace = gateway.trace(baofoo_inbound(body))
    assert trace["merchant_claimed"] == f"{MEMBER_ID}/2"
    assert trace["merchant_configured"] is False
    assert trace["merchants_configured"] == [PAIR, "555/5"]
    assert [(t["merchant"], t["key"], t["verified"]) for t in trace["keys_tried"]] == [
        (PAIR, md5_fingerprint(MD5_KEY), False),
        ("555/5", md5_fingerprint("key-two-22"), True),
    ]


def test_baofoo_trace_of_a_known_pair_tries_only_its_key():
    body = encode_form(sign_baofoo(baofoo_fields(), MD5_KEY))
    gateway = baofoo((MEMBER_ID, TERMINAL_ID, MD5_KEY), ("555", "5", "key-two-22"))
    trace = gateway.trace(baofoo_inbound(body))
    assert [(t["merchant"], t["key"], t["verified"]) for t in trace["keys_tried"]] == [
        (PAIR, md5_fingerprint(MD5_KEY), True),
    ]


def test_baofoo_trace_cuts_a_long_claimed_pair():
    body = encode_form(sign_baofoo(baofoo_fields(MemberID="7" * 100, TerminalID="8" * 70)))
    trace = baofoo().trace(baofoo_inbound(body))
    assert trace["merchant_claimed"] == "7" * 64 + "/" + "8" * 64


def test_baofoo_trace_of_a_signature_that_is_not_hex():
    fields = baofoo_fields()
    body = encode_form(fields | {"Md5Sign": "z" * 32})
    trace = baofoo().trace(baofoo_inbound(body))
    assert trace["problem"] == "Md5Sign is not 32 hex digits"
    assert trace["signed_text_sha256"] == {"utf-8": form_sha256(fields)}
    assert "keys_tried" not in trace


def test_baofoo_trace_of_missing_fields_and_wrong_type():
    assert baofoo().trace(baofoo_inbound(b"MemberID=1")) == {
        "merchants_configured": [PAIR],
        "problem": "missing field(s): Md5Sign, Result, ResultDesc, TerminalID, TransID",
    }
    trace = baofoo().trace(baofoo_inbound(b"", content_type="application/json"))
    assert trace["problem"] == "content type must be application/x-www-form-urlencoded"


def test_md5_key_fingerprint_is_short_and_never_the_key():
    assert md5_key_fingerprint(MD5_KEY) == md5_fingerprint(MD5_KEY)
    assert MD5_KEY not in md5_key_fingerprint(MD5_KEY)
    assert signed_fields({"MemberID": "1"}) == (
        "MemberID=1~|~TerminalID=~|~TransID=~|~Result=~|~ResultDesc=~|~FactMoney="
        "~|~AdditionalInfo=~|~SuccTime="
    )
