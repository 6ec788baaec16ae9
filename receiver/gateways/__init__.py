"""Gateway adapters: bytes in -> Notification; Outcome -> reply bytes. One package per gateway."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from receiver.config import Network
from receiver.errors import Rejected
from receiver.notification import Inbound, Notification, Outcome, kept_headers

if TYPE_CHECKING:
    import aiohttp


# Not frozen: built per request by reply() and read at once by the handler, it never travels;
# freezing would cost an object.__setattr__ per field on every notification.
@dataclass(slots=True)
class Reply:
    """An HTTP reply in a gateway's dialect."""

    status: int
    body: bytes
    content_type: str


@dataclass(frozen=True, slots=True)
class Dialect:
    """How a gateway wants to be answered: the body that stops its retries, and the one that
    does not (every refusal, whatever its status)."""

    success_body: bytes
    fail_body: bytes
    content_type: str


class Refusal(enum.IntEnum):
    """A reply given before or without an outcome; the value is its HTTP status (SPEC:
    `receiver_http_refusals_total`)."""

    BAD_REQUEST = 400  #: the HTTP parser refused the request (bad bytes, framing, method)
    METHOD_NOT_ALLOWED = 405  #: not a POST
    BODY_TIMEOUT = 408  #: the body did not arrive within `server.read_timeout_s`
    BODY_TOO_LARGE = 413  #: the body is over `server.max_body_bytes`
    UNSUPPORTED_MEDIA_TYPE = 415  #: content type, charset or a Content-Encoding not accepted
    TOO_MANY_UNVERIFIED = 429  #: over `server.unverified_per_minute` from this address
    DATABASE_UNAVAILABLE = 503  #: nothing acknowledged: the gateway retries


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


HTTP_STATUS: dict[Outcome, int] = {
    Outcome.APPLIED: 200,
    Outcome.APPLIED_LATE: 200,
    Outcome.DUPLICATE: 200,
    Outcome.STALE: 200,
    Outcome.NOOP: 200,
    Outcome.MALFORMED: 400,
    Outcome.BAD_SIGNATURE: 401,
    Outcome.EXPIRED: 401,
    Outcome.REPLAYED: 401,
    Outcome.IP_DENIED: 403,
    Outcome.UNKNOWN_MERCHANT: 403,
    Outcome.UNKNOWN_ORDER: 404,
    Outcome.AMOUNT_MISMATCH: 422,
    Outcome.CURRENCY_MISMATCH: 422,
    Outcome.CHANNEL_MISMATCH: 422,
}


def reply_status(answer: Outcome | Refusal) -> int:
    """SPEC's HTTP status for an outcome or a refusal."""
    return int(answer) if isinstance(answer, Refusal) else HTTP_STATUS[answer]


def reply(dialect: Dialect, answer: Outcome | Refusal) -> Reply:
    """The one place a reply is decided: SPEC's status, and the gateway's success body only for
    an outcome that tells it to stop retrying."""
    accepted = isinstance(answer, Outcome) and answer.accepted
    body = dialect.success_body if accepted else dialect.fail_body
    return Reply(reply_status(answer), body, dialect.content_type)


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
