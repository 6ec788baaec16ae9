"""The GoPay adapter: which merchant a notification is for."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from receiver.core.notification import Outcome
from receiver.gateways.gopay import (
    GoPayGateway,
)
from tests.support.gopay_adapter import (
    ABSENT,
    CHARGE,
    MCHID,
    inbound,
    make_gateway,
    notify,
    rejected,
    with_charge,
)
from tests.support.gopay_signer import GoPaySigner

# --- merchants --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ids",
    [{"mid": 200001}, {"mid": "200001"}, {"mchid": "200001"}, {"mid": 200001, "mchid": "200001"}],
)
def test_merchant_id_as_number_or_string(
    signer: GoPaySigner, key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey, ids: dict[str, Any]
) -> None:
    gw = make_gateway({MCHID: [key], "300001": [other_key]})
    body, headers = notify(signer, with_charge(**{"mid": ABSENT, **ids}))
    assert gw.parse(inbound(body, headers)).merchant_id == MCHID


def test_absent_merchant_id_means_the_single_merchant(
    gateway: GoPayGateway, signer: GoPaySigner
) -> None:
    body, headers = notify(signer, with_charge(mid=ABSENT))
    assert gateway.parse(inbound(body, headers)).merchant_id == MCHID


def test_absent_merchant_id_with_two_merchants_is_unknown_merchant(
    signer: GoPaySigner, key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey
) -> None:
    gw = make_gateway({MCHID: [key], "300001": [other_key]})
    body, headers = notify(signer, with_charge(mid=ABSENT))
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
    body, headers = notify(signer, with_charge(**{"mid": ABSENT, **ids}))
    error = rejected(gateway, body, headers)
    assert (error.outcome, error.reason, error.merchant_id) == (Outcome.MALFORMED, reason, None)
    assert error.out_trade_no == CHARGE["out_trade_no"]


@pytest.mark.parametrize(
    ("merchants", "mid", "reason"),
    [
        ([MCHID, "300001"], ABSENT, "charge names no merchant (mid)"),
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
    body, headers = notify(signer, with_charge(mid=ABSENT))
    del headers["X-Ca-Signature"]
    assert rejected(gateway, body, headers).merchant_id == MCHID


def test_refusal_before_the_merchant_is_known_names_none_of_two_merchants(
    key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey, signer: GoPaySigner
) -> None:
    gw = make_gateway({MCHID: [key], "300001": [other_key]})
    body, headers = notify(signer, with_charge(mid=ABSENT))
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
        (ABSENT, None),
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
