"""Baofoo order queries (reconciliation): a form POST signed with MD5, a `|`-separated text reply
verified by its MD5, then read by the notification side's rules (`build_notification`).

At most one query per order per minute is the caller's schedule to keep, not this module's.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlencode

import aiohttp

from receiver.config import BaofooConfig, BaofooMerchant
from receiver.core.notification import Notification, Outcome, Status
from receiver.errors import Rejected
from receiver.gateways import OrderRef, QueryAnswer, QueryResult
from receiver.gateways.asking import HttpReply, answered, error, exchange, refused
from receiver.gateways.baofoo.notify import FORM_TYPE, PROVIDER, build_notification
from receiver.gateways.baofoo.signing import query_reply_signature, query_request_signature

REPLY_FIELDS = ("MemberID", "TerminalID", "TransID", "CheckResult", "succMoney", "SuccTime")
_CHECK_RESULTS: dict[str, Status | None] = {"Y": Status.PAID, "F": Status.FAILED, "P": None}


@dataclass(frozen=True, slots=True)
class Terminal:
    """The terminal an order is queried through, with its merchant's MD5 key."""

    terminal_id: str
    md5_key: str = field(repr=False)


class BaofooQuerier:
    """The asking side of Baofoo 4.0 (PROTOCOL.md, Baofoo, order query)."""

    provider = PROVIDER

    def __init__(self, *, query_url: str, merchants: Iterable[BaofooMerchant]) -> None:
        self.url = query_url
        self._terminals: dict[str, list[Terminal]] = {}
        for m in merchants:
            self._terminals.setdefault(m.member_id, []).append(Terminal(m.terminal_id, m.md5_key))

    def __repr__(self) -> str:
        return f"BaofooQuerier(url={self.url!r}, members={sorted(self._terminals)!r})"

    @classmethod
    def from_config(cls, cfg: BaofooConfig) -> BaofooQuerier:
        """The querier for the `[baofoo]` section."""
        return cls(query_url=cfg.query_url, merchants=cfg.merchants)

    def not_queryable(self, order: OrderRef) -> str | None:
        """Why this order cannot be queried (merchant unknown or ambiguous), or None."""
        terminals = self._terminals.get(order.merchant_id, [])
        if not terminals:
            return f"Baofoo MemberID {order.merchant_id} is not configured"
        if len(terminals) > 1:
            # The order keeps only the MemberID; which terminal took it is unknown.
            return f"Baofoo MemberID {order.merchant_id} has several terminals configured"
        return None

    def build_request(self, order: OrderRef) -> bytes:
        """The signed form body of the order query for a queryable order."""
        terminal = self._terminals[order.merchant_id][0]
        signature = query_request_signature(
            member_id=order.merchant_id,
            terminal_id=terminal.terminal_id,
            trans_id=order.out_trade_no,
            md5_key=terminal.md5_key,
        )
        fields = {
            "MemberID": order.merchant_id,
            "TerminalID": terminal.terminal_id,
            "TransID": order.out_trade_no,
            "MD5Sign": signature,
        }
        return urlencode(fields).encode("ascii")

    async def query(
        self, session: aiohttp.ClientSession, order: OrderRef, *, timeout_s: float
    ) -> QueryAnswer:
        """Ask Baofoo about `order`; every failure is an answer, never an exception."""
        why = self.not_queryable(order)
        if why is not None:
            return error(why)
        terminal = self._terminals[order.merchant_id][0]
        return await exchange(
            session,
            self.url,
            data=self.build_request(order),
            headers={"Content-Type": FORM_TYPE, "Accept": "text/plain"},
            timeout_s=timeout_s,
            read=functools.partial(read_reply, order=order, terminal=terminal),
        )


def read_reply(reply: HttpReply, *, order: OrderRef, terminal: Terminal) -> QueryAnswer:
    """A reply as received -> the answer: error, refused (stored), not found or verified."""
    parts = _reply_parts(reply)
    if parts is None:
        return error(f"reply is not MemberID|...|Md5Sign text (HTTP {reply.status})")
    inbound = reply.inbound(PROVIDER)
    try:
        fields = verified_fields(parts, order=order, terminal=terminal)
        if fields["CheckResult"] == "N":
            return QueryAnswer(result=QueryResult.NOT_FOUND, reason="CheckResult=N")
        n = reply_notification(fields)
    except Rejected as exc:
        return refused(inbound, exc, order=order)
    return answered(inbound, n)


def _reply_parts(reply: HttpReply) -> list[str] | None:
    if reply.status != 200:
        return None
    try:
        parts = reply.body.decode("utf-8").strip().split("|")
    except UnicodeDecodeError:
        return None
    return parts if len(parts) == len(REPLY_FIELDS) + 1 else None


def verified_fields(parts: Sequence[str], *, order: OrderRef, terminal: Terminal) -> dict[str, str]:
    """The reply's fields once its MD5 matches and it names our order; Rejected otherwise."""
    signed, given = parts[:-1], parts[-1]
    expected = query_reply_signature(signed, terminal.md5_key)
    if not hmac.compare_digest(
        expected.encode("ascii"), given.strip().lower().encode("ascii", "replace")
    ):
        raise Rejected(Outcome.BAD_SIGNATURE, "reply Md5Sign does not match")
    fields = dict(zip(REPLY_FIELDS, signed, strict=True))
    ours = (order.merchant_id, terminal.terminal_id, order.out_trade_no)
    if (fields["MemberID"], fields["TerminalID"], fields["TransID"]) != ours:
        raise Rejected(Outcome.MALFORMED, "reply is about another order")
    return fields


def reply_notification(fields: Mapping[str, str]) -> Notification:
    """A verified Y/F/P reply as a notification: succMoney (fen) is what was paid."""
    check = fields["CheckResult"]
    if check not in _CHECK_RESULTS:
        raise Rejected(Outcome.MALFORMED, "CheckResult must be Y, F, P or N")
    as_notified = {
        "MemberID": fields["MemberID"],
        "TransID": fields["TransID"],
        "FactMoney": fields["succMoney"],
        "SuccTime": fields["SuccTime"],
    }
    return build_notification(
        as_notified, target=_CHECK_RESULTS[check], detail=f"CheckResult={check}"
    )
