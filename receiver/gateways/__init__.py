"""Gateway adapters: bytes in -> Notification; Outcome -> reply bytes. One package per gateway."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from receiver.core.addresses import Network
from receiver.core.notification import Inbound, Notification, kept_headers
from receiver.errors import Rejected

if TYPE_CHECKING:
    import aiohttp


@dataclass(frozen=True, slots=True)
class Dialect:
    """How a gateway wants to be answered: the body that stops its retries, and the one that
    does not (every refusal, whatever its status)."""

    success_body: bytes
    fail_body: bytes
    content_type: str


class Gateway(Protocol):
    """What handlers need of a gateway adapter."""

    provider: str
    allowed_ips: tuple[Network, ...]  # source addresses allowed to notify; empty = any
    dialect: Dialect
    signature_headers: tuple[str, ...]  # request headers the signature covers, kept when refused

    def parse(self, inbound: Inbound, *, fresh: bool = True) -> Notification:
        """Verify and parse one notification; raise `Rejected` with the outcome otherwise.

        `fresh=False` (a replay of stored bytes) skips only the freshness and nonce checks.
        """
        ...


def with_signature_headers(gateway: Gateway, inbound: Inbound, rejected: Rejected) -> Rejected:
    """`rejected`, keeping for the record the signature headers that came with the request."""
    if not rejected.headers:
        rejected.headers = kept_headers(inbound.headers, gateway.signature_headers)
    return rejected


# --- the asking side: order queries (reconciliation) ------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderRef:
    """What an order query needs to know of one of our orders."""

    order_id: int
    provider: str
    merchant_id: str
    out_trade_no: str
    amount_minor: int
    currency: str
    channel: str | None


class QueryResult(enum.StrEnum):
    """What one order query came to; the `result` label of `receiver_reconcile_queries_total`."""

    PAID = "paid"  #: a verified reply says paid
    FAILED = "failed"  #: a verified reply says the payment failed
    CLOSED = "closed"  #: a verified reply says the order was closed
    PENDING = "pending"  #: a verified reply says the gateway still waits for the payment
    NOT_FOUND = "not_found"  #: a verified reply says the gateway has no such order
    #: the reply's money does not match the order: not credited, a review is open
    HELD = "held"
    REFUSED = (
        "refused"  #: a reply came but failed verification or parsing (stored, changes nothing)
    )
    #: the gateway says our credentials, signature, address or route are wrong: retrying will
    #: not help until someone changes the configuration
    MISCONFIGURED = "misconfigured"
    LIMITED = "limited"  #: the gateway says we ask too often: the reconciler slows down
    ERROR = "error"  #: no usable reply: timeout, connection or TLS error, a redirect, garbage


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryAnswer:
    """One order query's answer, ready for the ledger.

    `notification` (a verified reply in neutral terms) goes through `Ledger.apply`, `rejected`
    (a reply that failed verification) through `Ledger.reject`, both with `inbound`, the reply
    exactly as received, and `source = 'query'`. NOT_FOUND and ERROR carry neither: nothing to
    apply, the order is asked again at its next due time.
    """

    result: QueryResult
    reason: str = ""
    inbound: Inbound | None = None
    notification: Notification | None = None
    rejected: Rejected | None = None


class OrderQuerier(Protocol):
    """The asking side of a gateway: sign an order query, send it, verify the reply."""

    provider: str

    def not_queryable(self, order: OrderRef) -> str | None:
        """Why this order cannot be queried (no channel, no key), or None when it can."""
        ...

    async def query(
        self, session: aiohttp.ClientSession, order: OrderRef, *, timeout_s: float
    ) -> QueryAnswer:
        """Ask the gateway about `order`; every failure is an answer, never an exception."""
        ...
