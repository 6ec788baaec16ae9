"""GoPay order queries (reconciliation): sign `POST {api_url}/pay/orderquery` with the merchant's
private key, verify the reply over its raw `charge` bytes with the platform key.

The reply goes through the notification side's rules (`read_envelope`, `SignatureHeaders`,
`verify_signature`, `build_notification`): one set of rules for pushed and pulled truth. Only
freshness and the nonce are not checked: we asked for this reply.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from yarl import URL

from receiver.config import GoPayConfig, GoPayMerchant
from receiver.core.notification import Notification, Outcome
from receiver.errors import Rejected
from receiver.gateways import OrderRef, QueryAnswer, QueryResult
from receiver.gateways.asking import HttpReply, answered, error, exchange, refused
from receiver.gateways.gopay.jsonspan import read_envelope
from receiver.gateways.gopay.notify import (
    PROVIDER,
    build_notification,
    check_result_code,
    claimed_merchant,
    text_field,
)
from receiver.gateways.gopay.signing import (
    AUTH_HEADER,
    NONCE_HEADER,
    RESTURL_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SignatureHeaders,
    load_key_file,
    load_private_key_file,
    new_nonce,
    now_ms,
    sign_request,
    verify_signature,
)

QUERY_PATH = "/pay/orderquery"
ORDER_NOT_FOUND = 200000  # the platform's error_code for "Order does not exist."
# The seed's codes for "your credentials, signature, address or route are wrong" (400003 comes
# with HTTP 400 or 403): asking again will not help until the configuration changes.
MISCONFIGURED_CODES = frozenset({400003, 400006, 400008, 600000})
RATE_LIMITED = 100003  # HTTP 403: more than 10 requests a second from one address
_ERROR_MSG_MAX = 120
SIGNED_HEADERS = (NONCE_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER)  # kept with a stored reply


@dataclass(frozen=True, slots=True)
class QueryAccount:
    """What one merchant needs to ask: its signing key, API key and the platform's keys."""

    mchid: str
    private_key: RSAPrivateKey | None = field(repr=False)
    api_key: str = field(repr=False)
    platform_keys: tuple[RSAPublicKey, ...] = field(repr=False)
    default_channel: str = ""


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """One order query ready to send: URL, exact body bytes, headers."""

    url: str
    body: bytes
    headers: dict[str, str]


class GoPayQuerier:
    """The asking side of GoPay (PROTOCOL.md, GoPay, Order query)."""

    provider = PROVIDER

    def __init__(
        self,
        *,
        api_url: str,
        accounts: Mapping[str, QueryAccount],
        nonce: Callable[[], str] = new_nonce,
        clock_ms: Callable[[], str] = now_ms,
    ) -> None:
        self.url = api_url.rstrip("/") + QUERY_PATH
        self._path = URL(self.url).raw_path  # signed as sent, any api_url prefix included
        self.accounts = dict(accounts)
        self._nonce = nonce
        self._clock_ms = clock_ms

    def __repr__(self) -> str:
        return f"GoPayQuerier(url={self.url!r}, merchants={sorted(self.accounts)!r})"

    @classmethod
    def from_config(cls, cfg: GoPayConfig, *, source: str) -> GoPayQuerier:
        """Build the querier, loading every merchant's private key and platform keys."""
        accounts = {
            m.mchid: _account(m, key=f"gopay.merchants[{i}]", source=source)
            for i, m in enumerate(cfg.merchants)
        }
        return cls(api_url=cfg.api_url, accounts=accounts)

    def not_queryable(self, order: OrderRef) -> str | None:
        """Why this order cannot be queried (merchant, key, API key, channel), or None."""
        account = self.accounts.get(order.merchant_id)
        if account is None:
            return f"GoPay merchant {order.merchant_id} is not configured"
        if account.private_key is None:
            return f"GoPay merchant {order.merchant_id} has no private_key to sign queries"
        if not account.api_key:
            return f"GoPay merchant {order.merchant_id} has no api_key (x-ca-auth)"
        if not (order.channel or account.default_channel):
            return "the order has no channel and the merchant no default_channel"
        return None

    def build_request(self, order: OrderRef) -> SignedRequest:
        """The signed order query for a queryable order (pure but for nonce and clock)."""
        account = self.accounts[order.merchant_id]
        assert account.private_key is not None  # callers ask not_queryable first
        body = query_body(order, channel=order.channel or account.default_channel)
        nonce, timestamp = self._nonce(), self._clock_ms()
        signature = sign_request(
            account.private_key,
            path=self._path,
            query="",
            nonce=nonce,
            timestamp=timestamp,
            body=body,
        )
        headers = {
            "Content-Type": "application/json; charset=UTF-8",
            "Accept": "application/json",
            RESTURL_HEADER: self.url,
            TIMESTAMP_HEADER: timestamp,
            NONCE_HEADER: nonce,
            AUTH_HEADER: account.api_key,
            SIGNATURE_HEADER: signature,
        }
        return SignedRequest(url=self.url, body=body, headers=headers)

    async def query(
        self, session: aiohttp.ClientSession, order: OrderRef, *, timeout_s: float
    ) -> QueryAnswer:
        """Ask the platform about `order`; every failure is an answer, never an exception."""
        why = self.not_queryable(order)
        if why is not None:
            return error(why)
        keys = self.accounts[order.merchant_id].platform_keys
        request = self.build_request(order)
        return await exchange(
            session,
            request.url,
            data=request.body,
            headers=request.headers,
            timeout_s=timeout_s,
            read=functools.partial(read_reply, order=order, platform_keys=keys),
        )


def _account(m: GoPayMerchant, *, key: str, source: str) -> QueryAccount:
    private_key = (
        None
        if m.private_key is None
        else load_private_key_file(m.private_key, source=source, key=f"{key}.private_key")
    )
    platform_keys = tuple(
        load_key_file(path, source=source, key=f"{key}.platform_public_keys[{j}]")
        for j, path in enumerate(m.platform_public_keys)
    )
    return QueryAccount(
        mchid=m.mchid,
        private_key=private_key,
        api_key=m.api_key,
        platform_keys=platform_keys,
        default_channel=m.default_channel,
    )


def query_body(order: OrderRef, *, channel: str) -> bytes:
    """The exact request body: compact, ASCII-only JSON (non-ASCII escaped as \\uXXXX)."""
    fields = {"mchid": order.merchant_id, "out_trade_no": order.out_trade_no, "channel": channel}
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=True).encode("ascii")


# --- the reply ------------------------------------------------------------------------------


def read_reply(
    reply: HttpReply, *, order: OrderRef, platform_keys: tuple[RSAPublicKey, ...]
) -> QueryAnswer:
    """A reply as received -> the answer: error, refused (stored) or verified (applied)."""
    parsed = _json_object(reply.body)
    if parsed is None:
        return error(f"reply is not a JSON object (HTTP {reply.status})")
    if "error_code" in parsed:
        return _error_code(parsed)
    if reply.status != 200 or "charge" not in parsed:
        return error(f"reply is not a successful query result (HTTP {reply.status})")
    inbound = reply.inbound(PROVIDER, keep=SIGNED_HEADERS)
    try:
        n = verified_notification(reply, order=order, platform_keys=platform_keys)
    except Rejected as exc:
        return refused(inbound, exc, order=order)
    return answered(inbound, n)


def verified_notification(
    reply: HttpReply, *, order: OrderRef, platform_keys: tuple[RSAPublicKey, ...]
) -> Notification:
    """Verify the reply over its raw charge bytes, then read it as a notification; or Rejected."""
    envelope = read_envelope(reply.body)
    charge = envelope.charge
    headers = SignatureHeaders.from_mapping(reply.headers)
    variant = verify_signature(platform_keys, headers=headers, charge=envelope.charge_bytes)
    if variant is None:
        raise Rejected(
            Outcome.BAD_SIGNATURE,
            "reply signature does not verify with any of the merchant's platform keys",
        )
    check_result_code(envelope.result_code, envelope.result_msg)
    _check_same_order(charge, order=order)
    return build_notification(
        charge,
        merchant_id=order.merchant_id,
        headers=headers,
        nonce=None,  # a reply we asked for: no freshness or nonce check
        detail=f"signature={variant}",
    )


def _check_same_order(charge: Mapping[str, Any], *, order: OrderRef) -> None:
    # A genuine reply about another order (a mix-up or a replayed capture) must not touch ours.
    claimed = claimed_merchant(charge)
    if claimed is not None and claimed != order.merchant_id:
        raise Rejected(Outcome.UNKNOWN_MERCHANT, "reply names another merchant")
    if text_field(charge, "out_trade_no") != order.out_trade_no:
        raise Rejected(Outcome.MALFORMED, "reply is about another out_trade_no")


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    return parsed if isinstance(parsed, dict) else None


def _error_code(parsed: Mapping[str, Any]) -> QueryAnswer:
    code, message = parsed.get("error_code"), parsed.get("error_msg")
    text = message[:_ERROR_MSG_MAX] if isinstance(message, str) else ""
    reason = f"gateway error_code {code}: {text}".rstrip(": ")
    # Unsigned, so it is only believed as far as "nothing to apply": not found is asked again too.
    if code == ORDER_NOT_FOUND:
        return QueryAnswer(result=QueryResult.NOT_FOUND, reason=reason)
    if code in MISCONFIGURED_CODES:
        return QueryAnswer(result=QueryResult.MISCONFIGURED, reason=reason)
    if code == RATE_LIMITED:
        return QueryAnswer(result=QueryResult.LIMITED, reason=reason)
    return error(reason)
