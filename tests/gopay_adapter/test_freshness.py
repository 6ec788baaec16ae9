"""The GoPay adapter: the timestamp and its tolerance."""

from __future__ import annotations

from decimal import Decimal

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given
from hypothesis import strategies as st

from receiver.core.notification import Outcome
from receiver.gateways.gopay import (
    GoPayGateway,
    parse_timestamp,
)
from tests.support.gopay_adapter import (
    CHARGE,
    MCHID,
    NOW,
    inbound,
    make_gateway,
    notify,
    rejected,
)
from tests.support.gopay_signer import GoPaySigner

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
    direction = "behind" if offset_s > 0 else "ahead of"  # the clock is past the timestamp
    assert (error.outcome, error.reason) == (
        Outcome.EXPIRED,
        f"x-ca-timestamp is {abs(offset_s):.3f} s {direction} the service's clock (tolerance 1 s)",
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
