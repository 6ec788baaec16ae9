"""The GoPay adapter under test, pure: a gateway on a fixed clock, inbound requests, signed
notifications (shared by tests/gopay_adapter/)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from receiver.core.notification import Inbound
from receiver.errors import Rejected
from receiver.gateways.gopay import (
    GoPayGateway,
    find_charge_span,
)
from tests.support.gopay_signer import GoPaySigner

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
    charge.update({k: v for k, v in changes.items() if v is not ABSENT})
    return charge


ABSENT = object()


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


def span_text(body: bytes) -> bytes:
    start, end = find_charge_span(body)
    return body[start:end]


def write_key(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path
