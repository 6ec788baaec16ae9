"""Gateway adapters: bytes in -> Notification; Outcome -> reply bytes. One package per gateway."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from receiver.config import Network
from receiver.notification import Inbound, Notification, Outcome


@dataclass(frozen=True, slots=True)
class Reply:
    """An HTTP reply in a gateway's dialect."""

    status: int
    body: bytes
    content_type: str


class Gateway(Protocol):
    """What handlers need of a gateway adapter."""

    provider: str
    allowed_ips: tuple[Network, ...]  # source addresses allowed to notify; empty = any

    def parse(self, inbound: Inbound) -> Notification:
        """Verify and parse one notification; raise `Rejected` with the outcome otherwise."""
        ...

    def reply(self, outcome: Outcome | None) -> Reply:
        """The reply for an outcome; None means the database was unavailable (503)."""
        ...


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
}


def http_status(outcome: Outcome | None) -> int:
    """SPEC's HTTP status for an outcome; None (database unavailable) is 503."""
    return 503 if outcome is None else HTTP_STATUS[outcome]
