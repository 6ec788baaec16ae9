"""`receiver explain --id N`: why a stored notification got its outcome.

Read-only. The signature, merchant and timestamp checks come from each gateway's own `trace`
(beside the `parse` the intake runs, on the same verifier); the amounts from the same rule the
ledger applies (`check_amount`). Never prints a key (keys by fingerprint) or the body (its size
and SHA-256 only).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import asyncpg

from receiver.core.notification import Notification, Outcome, check_amount
from receiver.errors import Rejected
from receiver.gateways import Gateway
from receiver.gateways.baofoo import BaofooGateway
from receiver.gateways.gopay import GoPayGateway
from receiver.gateways.registry import BY_PROVIDER
from receiver.sources.replay import stored_inbound

SELECT_NOTIFICATION = """
SELECT id, provider, received_at, remote_addr, headers, body, merchant_id, out_trade_no, outcome,
       detail, order_id, source, replay_of
FROM notifications WHERE id = $1
"""
# By the id the ledger recorded; else (a refusal before the order was looked up) by its key.
SELECT_ORDER = """
SELECT id, merchant_id, out_trade_no, amount_minor, currency, status, paid_amount_minor, channel
FROM orders
WHERE ($1::bigint IS NOT NULL AND id = $1)
   OR ($1::bigint IS NULL AND provider = $2 AND merchant_id = $3 AND out_trade_no = $4)
"""
PASSED = frozenset(o for o in Outcome if o.accepted)


class NoSuchNotification(Exception):
    """The id names no stored notification."""


async def explain(
    conn: asyncpg.Connection, notification_id: int, *, gateways: Mapping[str, Gateway]
) -> dict[str, Any]:
    """Everything that decided the stored notification's outcome, as a JSON-ready dict."""
    row = await conn.fetchrow(SELECT_NOTIFICATION, notification_id)
    if row is None:
        raise NoSuchNotification(f"no stored notification with id {notification_id}")
    body = bytes(row["body"] or b"")
    headers = json.loads(row["headers"]) if isinstance(row["headers"], str) else row["headers"]
    found: dict[str, Any] = {
        "id": row["id"],
        "provider": row["provider"],
        "source": row["source"],
        "received_at": row["received_at"].isoformat(),
        "remote_addr": None if row["remote_addr"] is None else str(row["remote_addr"]),
        "outcome": row["outcome"],
        "detail": row["detail"],
        "received": {
            "headers": headers,
            "body_bytes": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
        },
    }
    notification = None
    gateway = gateways.get(row["provider"])
    if gateway is not None and row["source"] != "query":
        inbound = stored_inbound(row)
        found["checks"] = trace(gateway, inbound, now=row["received_at"])
        notification, found["verified_today"] = _parsed(gateway, inbound)
    if notification is not None:
        found["notification"] = _notification(notification)
    order = await _order(conn, row, notification)
    found["order"] = None if order is None else _order_dict(order, notification)
    found["would_pass"] = would_pass(found)
    return found


def trace(gateway: Gateway, inbound: Any, *, now: datetime) -> dict[str, Any]:
    """The gateway's own trace of its checks, the timestamp against the clock at receipt."""
    if isinstance(gateway, GoPayGateway):
        return gateway.trace(inbound, now=now.timestamp())
    if isinstance(gateway, BaofooGateway):
        return gateway.trace(inbound)
    return {}


def _parsed(gateway: Gateway, inbound: Any) -> tuple[Notification | None, str]:
    """The notification as today's keys read it (freshness aside), or why they refuse it."""
    try:
        return gateway.parse(inbound, fresh=False), "yes"
    except Rejected as exc:
        return None, f"no: {exc.outcome.value}: {exc.reason}"


def _notification(n: Notification) -> dict[str, Any]:
    return {
        "merchant_id": n.merchant_id,
        "out_trade_no": n.out_trade_no,
        "target_status": None if n.target is None else n.target.value,
        "order_amount": money(n.order_amount_minor),
        "paid_amount": money(n.paid_amount_minor),
        "currency": n.currency,
    }


async def _order(
    conn: asyncpg.Connection, row: asyncpg.Record, n: Notification | None
) -> asyncpg.Record | None:
    merchant_id = n.merchant_id if n is not None else row["merchant_id"]
    out_trade_no = n.out_trade_no if n is not None else row["out_trade_no"]
    found: asyncpg.Record | None = await conn.fetchrow(
        SELECT_ORDER, row["order_id"], row["provider"], merchant_id, out_trade_no
    )
    return found


def _order_dict(order: asyncpg.Record, n: Notification | None) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "id": order["id"],
        "merchant_id": order["merchant_id"],
        "out_trade_no": order["out_trade_no"],
        "amount": money(order["amount_minor"]),
        "currency": order["currency"],
        "status": order["status"],
        "paid_amount": money(order["paid_amount_minor"]),
    }
    if n is not None:
        held = check_amount(
            n,
            amount_minor=order["amount_minor"],
            currency=order["currency"],
            channel=order["channel"],
        )
        shown["amounts_match"] = held is None
    return shown


def money(minor: int | None) -> str | None:
    """Minor units as a decimal amount text: 9900 -> "99.00"."""
    if minor is None:
        return None
    sign = "-" if minor < 0 else ""
    return f"{sign}{abs(minor) // 100}.{abs(minor) % 100:02d}"


def would_pass(found: Mapping[str, Any]) -> str | None:
    """What would have made the notification pass, in words; None when it passed."""
    outcome = found["outcome"]
    if outcome in PASSED:
        return None
    checks: dict[str, Any] = found.get("checks", {})
    explain = _WOULD_PASS.get(outcome)
    return explain(found, checks) if explain else f"see the detail: {found['detail']}"


def _signature(found: Mapping[str, Any], checks: Mapping[str, Any]) -> str:
    if "problem" in checks:
        return f"a signature that can be checked: {checks['problem']}"
    tried = checks.get("keys_tried", [])
    if any(t["verified"] for t in tried):
        return f"nothing more: it verifies with today's keys (receiver replay --id {found['id']})"
    keys = ", ".join(sorted({t["key"] for t in tried})) or "none"
    where = BY_PROVIDER[found["provider"]].key_setting
    return (
        f"a signature by the key of one of the keys tried ({keys}); none verifies, so the"
        f" sender signs with another key: configure its key in {where}"
    )


def _expired(_found: Mapping[str, Any], checks: Mapping[str, Any]) -> str:
    ts = checks.get("timestamp", {})
    if "skew_s" not in ts:
        return "an x-ca-timestamp in ms, us or ns"
    return (
        f"a timestamp within {ts['tolerance_s']} s of the service's clock; it was"
        f" {abs(ts['skew_s'])} s {'behind' if ts['skew_s'] < 0 else 'ahead of'} it: check the"
        " sender's clock and the delay before it was sent (or gopay.timestamp_tolerance_s)"
    )


def _unknown_merchant(found: Mapping[str, Any], checks: Mapping[str, Any]) -> str:
    claimed = checks.get("merchant_claimed")
    configured = ", ".join(checks.get("merchants_configured", [])) or "none"
    return f"merchant {claimed} in the {found['provider']} configuration (it lists: {configured})"


def _amounts(found: Mapping[str, Any], _checks: Mapping[str, Any]) -> str:
    n, order = found.get("notification"), found.get("order")
    if n is None or order is None:
        return "an order whose amount and currency match the notification's"
    paid = n["order_amount"] or n["paid_amount"]
    return (
        f"an order of {paid} {n['currency']} (the order says {order['amount']}"
        f" {order['currency']}; paid {n['paid_amount']} {n['currency']}): the order is held"
        " for review, the gateway's retry settles a corrected order"
    )


def _unknown_order(found: Mapping[str, Any], _checks: Mapping[str, Any]) -> str:
    n = found.get("notification") or {}
    return (
        f"order {n.get('merchant_id')}/{n.get('out_trade_no')} existing before the notification"
        f" came (once it exists: receiver replay --id {found['id']})"
    )


Explainer = Callable[[Mapping[str, Any], Mapping[str, Any]], str]
_WOULD_PASS: dict[str, Explainer] = {
    Outcome.BAD_SIGNATURE.value: _signature,
    Outcome.EXPIRED.value: _expired,
    Outcome.UNKNOWN_MERCHANT.value: _unknown_merchant,
    Outcome.AMOUNT_MISMATCH.value: _amounts,
    Outcome.CURRENCY_MISMATCH.value: _amounts,
    Outcome.UNKNOWN_ORDER.value: _unknown_order,
    Outcome.IP_DENIED.value: lambda f, _c: f"the source address {f['remote_addr']} allowed",
    Outcome.REPLAYED.value: lambda _f, _c: "a nonce not seen before within the window",
    Outcome.MALFORMED.value: lambda f, _c: f"a well-formed notification: {f['detail']}",
}


def render_text(found: Mapping[str, Any], indent: str = "") -> str:
    """The explanation as indented `name: value` lines, for a person."""
    lines: list[str] = []
    for name, value in found.items():
        label = name.replace("_", " ")
        if isinstance(value, Mapping):
            lines.append(f"{indent}{label}:")
            lines.append(render_text(value, indent + "  ") if value else f"{indent}  (none)")
        elif isinstance(value, list):
            lines.append(f"{indent}{label}:")
            lines.extend(f"{indent}  - {_inline(item)}" for item in value)
        else:
            lines.append(f"{indent}{label}: {_scalar(value)}")
    return "\n".join(lines)


def _inline(item: Any) -> str:
    if isinstance(item, Mapping):
        return ", ".join(f"{k.replace('_', ' ')} {_scalar(v)}" for k, v in item.items())
    return _scalar(item)


def _scalar(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)
