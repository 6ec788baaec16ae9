"""The payments a stand-in gateway holds, and how each gateway writes one down. Pure."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from receiver.core.notification import Status
from receiver.gateways.baofoo.notify import CHINA_TIME

GOPAY_DEFAULT_CHANNEL = "gopay_banktransfer"
_GOPAY_STATUS = {Status.CLOSED: 0, Status.PENDING: 1, Status.PAID: 2, Status.FAILED: 3}
# Baofoo knows no "closed": an order that timed out is a failure with code 0002.
_BAOFOO_CHECK = {Status.PAID: "Y", Status.FAILED: "F", Status.CLOSED: "F", Status.PENDING: "P"}
_BAOFOO_RESULT = {
    Status.PAID: ("1", "01"),
    Status.FAILED: ("0", "0000"),
    Status.CLOSED: ("0", "0002"),
}


def _trade_no() -> str:
    return "SIM" + secrets.token_hex(8).upper()


@dataclass(frozen=True, slots=True, kw_only=True)
class Payment:
    """One payment as the gateway sees it; `paid_minor` None means the amount was paid."""

    provider: str
    merchant_id: str
    out_trade_no: str
    amount_minor: int
    currency: str = "CNY"
    status: Status = Status.PAID
    paid_minor: int | None = None
    channel: str = ""  # GoPay: the payment product ("" = gopay_banktransfer)
    terminal_id: str = ""  # Baofoo: the terminal the order was placed on
    trade_no: str = field(default_factory=_trade_no)
    paid_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def key(self) -> tuple[str, str, str]:
        """How the gateway finds it: provider, merchant, out_trade_no."""
        return (self.provider, self.merchant_id, self.out_trade_no)

    @property
    def paid(self) -> int:
        """What was paid, in minor units."""
        return self.amount_minor if self.paid_minor is None else self.paid_minor

    def as_json(self) -> dict[str, Any]:
        """The payment for a JSON line (amounts in minor units)."""
        return {
            "provider": self.provider,
            "merchant_id": self.merchant_id,
            "out_trade_no": self.out_trade_no,
            "amount_minor": self.amount_minor,
            "paid_minor": self.paid,
            "currency": self.currency,
            "status": self.status.value,
            "trade_no": self.trade_no,
        }


def decimal_text(minor: int) -> str:
    """Minor units as GoPay writes amounts: three decimals, `"1.660"`."""
    return f"{Decimal(minor).scaleb(-2):.3f}"


def gopay_charge(p: Payment) -> dict[str, Any]:
    """The charge object GoPay notifies and answers queries with (PHP key order)."""
    charge: dict[str, Any] = {
        "mchid": p.merchant_id,
        "trade_no": p.trade_no,
        "out_trade_no": p.out_trade_no,
        "subject": "stand-in payment",
        "body": "stand-in payment",
        "extparam": "[]",
        "amount": decimal_text(p.amount_minor),
        "channel": p.channel or GOPAY_DEFAULT_CHANNEL,
        "currency": p.currency,
        "client_ip": "127.0.0.1",
        "status": str(_GOPAY_STATUS[p.status]),
    }
    if p.paid_minor is not None:
        charge["pay_amount"] = decimal_text(p.paid_minor)
    return charge


def gopay_query_charge(p: Payment) -> dict[str, Any]:
    """The charge of GoPay's order-query reply: as notified, but never with `pay_amount` (the
    seed's reply has none), so that a client sees what production sends."""
    charge = gopay_charge(p)
    charge.pop("pay_amount", None)
    return charge


def china_time(at: datetime) -> str:
    """Baofoo's SuccTime: `YYYYMMDDhhmmss` in China time."""
    return at.astimezone(CHINA_TIME).strftime("%Y%m%d%H%M%S")


def baofoo_notification_fields(p: Payment) -> dict[str, str]:
    """The fields of Baofoo's notification for a final payment (Md5Sign not yet added)."""
    result, desc = _BAOFOO_RESULT[p.status]
    return {
        "MemberID": p.merchant_id,
        "TerminalID": p.terminal_id,
        "TransID": p.out_trade_no,
        "Result": result,
        "ResultDesc": desc,
        "FactMoney": str(p.paid if p.status is Status.PAID else 0),
        "AdditionalInfo": "",
        "SuccTime": china_time(p.paid_at),
    }


def baofoo_reply_parts(p: Payment) -> list[str]:
    """The six signed parts of Baofoo's order-query reply for a payment it holds."""
    paid = p.paid if p.status is Status.PAID else 0
    return [
        p.merchant_id,
        p.terminal_id,
        p.out_trade_no,
        _BAOFOO_CHECK[p.status],
        str(paid),
        china_time(p.paid_at),
    ]
