"""The one intake: every source of a notification (a gateway's push over HTTP, an operator's
replay, an order-query reply) goes through here to the same rules and the same ledger, and
gets back one `Received`, which the reply, the log line, the metrics and a command's output
all read (`Received.fields` is the one flat view of it).

    receive(gateway, inbound)  source address -> encoding -> gateway.parse (verify, then read)
                               -> refused: record it (unless the flood guard says no)
                               -> verified: the ledger applies it
    record(ledger, inbound, notification | rejected)
                               the storing step alone, for what was verified elsewhere (an
                               order-query reply is verified by its querier)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import hdrs

from receiver.core.addresses import address_in
from receiver.core.notification import Inbound, Notification, Outcome
from receiver.core.planning import Decision
from receiver.errors import DatabaseUnavailable, Rejected
from receiver.gateways import Gateway, with_signature_headers
from receiver.store.ledger import NOTIFY, Ledger, Result

#: The outcomes a notification gets before its signature verified (what the flood guard counts).
UNVERIFIED_OUTCOMES = frozenset(
    {Outcome.MALFORMED, Outcome.BAD_SIGNATURE, Outcome.UNKNOWN_MERCHANT, Outcome.IP_DENIED}
)
_IDENTITY = frozenset({"", "identity"})


# Not frozen: built once per notification and read right away, it never travels; freezing would
# cost an object.__setattr__ per field on every notification.
@dataclass(slots=True, kw_only=True)
class Received:
    """What one inbound notification came to, whatever its source."""

    remote_addr: str | None = None
    result: Result | None = None  # what the ledger committed
    rejected: Rejected | None = None  # the gateway's refusal (stored in `result` unless dry run)
    decision: Decision | None = None  # a dry run's preview: what the ledger would do
    flooded: bool = False  # refused unstored: too many unverified from this address
    unavailable: bool = False  # the database could not be reached: nothing known committed
    note: str = ""  # why nothing was stored, when nothing was
    merchant_id: str | None = None  # what was read, when nothing was stored
    out_trade_no: str | None = None

    @property
    def outcome(self) -> Outcome | None:
        """The outcome stored (or, in a dry run, that would be); None when nothing was."""
        if self.result is not None:
            return self.result.outcome
        if self.decision is not None:
            return self.decision.outcome
        if self.rejected is not None and not self.unavailable:
            return self.rejected.outcome
        return None

    def fields(self) -> dict[str, Any]:
        """The one flat view, for log lines, reports and command output."""
        r = self.result
        if r is not None:
            return {
                "merchant_id": r.merchant_id,
                "out_trade_no": r.out_trade_no,
                "outcome": r.outcome.value,
                "notification_id": r.notification_id,
                "order_id": r.order_id,
                "from_status": r.from_status and r.from_status.value,
                "to_status": r.to_status and r.to_status.value,
                "reason": r.detail,
            }
        fields: dict[str, Any] = {
            "merchant_id": self.merchant_id,
            "out_trade_no": self.out_trade_no,
            "reason": self.note,
        }
        d = self.decision
        if d is not None:
            fields |= {
                "outcome": d.outcome.value,
                "order_id": d.order_id,
                "from_status": d.from_status and d.from_status.value,
                "to_status": d.to_status and d.to_status.value,
                "reason": d.detail,
            }
        elif self.rejected is not None and not self.unavailable:
            fields |= {"outcome": self.rejected.outcome.value, "reason": self.rejected.reason}
        return fields


async def receive(
    gateway: Gateway,
    inbound: Inbound,
    *,
    ledger: Ledger,
    source: str = NOTIFY,
    replay_of: int | None = None,
    fresh: bool = True,
    admit: Callable[[str | None], bool] | None = None,
    dry_run: bool = False,
) -> Received:
    """Verify, read and record one notification; every source calls this.

    `fresh=False` (a replay) skips only the freshness and nonce checks; `admit` is the flood
    guard's verdict on a refusal from this address (HTTP only); `dry_run` stores nothing and
    previews what the ledger would do.
    """
    try:
        check_source(gateway, inbound.remote_addr)
        check_encoding(inbound)
        notification = gateway.parse(inbound, fresh=fresh)
    except Rejected as rejected:
        refused = with_signature_headers(gateway, inbound, rejected)
        if dry_run:
            return _read(inbound, refused)
        flood_guarded = admit is not None and refused.outcome in UNVERIFIED_OUTCOMES
        if flood_guarded and not admit(inbound.remote_addr):  # type: ignore[misc]
            return Received(remote_addr=inbound.remote_addr, flooded=True)
        return await record(ledger, inbound, rejected=refused, source=source, replay_of=replay_of)
    if dry_run:
        return Received(
            remote_addr=inbound.remote_addr,
            decision=await ledger.preview(notification),
            merchant_id=notification.merchant_id,
            out_trade_no=notification.out_trade_no,
        )
    return await record(ledger, inbound, notification, source=source, replay_of=replay_of)


async def record(
    ledger: Ledger,
    inbound: Inbound,
    notification: Notification | None = None,
    *,
    rejected: Rejected | None = None,
    source: str = NOTIFY,
    replay_of: int | None = None,
) -> Received:
    """Store a verified notification (the ledger applies it) or a refusal (kept with its
    outcome); a database that cannot be reached gives `unavailable`, never an exception."""
    try:
        if notification is not None:
            result = await ledger.apply(inbound, notification, source=source, replay_of=replay_of)
        elif rejected is not None:
            result = await ledger.reject(inbound, rejected, source=source, replay_of=replay_of)
        else:
            raise ValueError("record() needs a notification or a refusal")
    except DatabaseUnavailable as exc:
        read = notification if notification is not None else rejected
        return Received(
            remote_addr=inbound.remote_addr,
            rejected=rejected,
            unavailable=True,
            note=str(exc),
            merchant_id=read.merchant_id if read is not None else None,
            out_trade_no=read.out_trade_no if read is not None else None,
        )
    return Received(remote_addr=inbound.remote_addr, result=result, rejected=rejected)


def _read(inbound: Inbound, rejected: Rejected) -> Received:
    return Received(
        remote_addr=inbound.remote_addr,
        rejected=rejected,
        merchant_id=rejected.merchant_id,
        out_trade_no=rejected.out_trade_no,
    )


def check_source(gateway: Gateway, remote_addr: str | None) -> None:
    """IP_DENIED when the gateway has an allow-list and the address is not on it."""
    allowed = gateway.allowed_ips
    if allowed and not address_in(remote_addr, allowed):
        raise Rejected(Outcome.IP_DENIED, f"source address {remote_addr} not allowed")


def check_encoding(inbound: Inbound) -> None:
    """Gateways never compress: any Content-Encoding but identity is refused, never decoded
    (the server does not decompress either), so a decompression bomb costs nothing."""
    encoding = inbound.headers.get(hdrs.CONTENT_ENCODING)
    if encoding and any(token.strip().lower() not in _IDENTITY for token in encoding.split(",")):
        raise Rejected(
            Outcome.MALFORMED,
            "a Content-Encoding other than identity is not accepted",
            media_type=True,
        )
