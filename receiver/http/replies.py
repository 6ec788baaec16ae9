"""Every HTTP reply the service gives, decided here: SPEC's status for each outcome and refusal,
the gateway's dialect body, `Allow` on a 405, the replies when no gateway is named, and the
counting of refusals (`receiver_http_refusals_total`).

Gateway adapters give data only (their dialect: success and fail bodies, content type; a
`Rejected` that says whether the media type was refused); statuses live in this one table.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from http import HTTPStatus

from aiohttp import hdrs, web

from receiver import metrics
from receiver.core.notification import Outcome
from receiver.gateways import Dialect
from receiver.sources.intake import Received

# The Server header every reply carries: the service, never the aiohttp and Python versions.
SERVER_NAME = "receiver"


class Refusal(enum.IntEnum):
    """A reply given before or without an outcome; the value is its HTTP status (the `status`
    label of `receiver_http_refusals_total`)."""

    BAD_REQUEST = 400  #: the HTTP parser refused the request (bad bytes, framing, method)
    METHOD_NOT_ALLOWED = 405  #: not a POST
    BODY_TIMEOUT = 408  #: the body did not arrive within `server.read_timeout_s`
    BODY_TOO_LARGE = 413  #: the body is over `server.max_body_bytes`
    UNSUPPORTED_MEDIA_TYPE = 415  #: content type, charset or a Content-Encoding not accepted
    TOO_MANY_UNVERIFIED = 429  #: over `server.unverified_per_minute` from this address
    DATABASE_UNAVAILABLE = 503  #: nothing acknowledged: the gateway retries


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


# Not frozen: built per request and read at once, it never travels; freezing would cost an
# object.__setattr__ per field on every notification.
@dataclass(slots=True)
class Reply:
    """An HTTP reply in a gateway's dialect."""

    status: int
    body: bytes
    content_type: str


def reply_status(answer: Outcome | Refusal) -> int:
    """The HTTP status for an outcome or a refusal."""
    return int(answer) if isinstance(answer, Refusal) else HTTP_STATUS[answer]


def answer_of(received: Received) -> Outcome | Refusal:
    """How a notification is answered: 429 when the flood guard refused it, 503 when nothing is
    known committed, 415 when its media type was refused (stored as its outcome all the same),
    else its outcome."""
    if received.flooded:
        return Refusal.TOO_MANY_UNVERIFIED
    if received.unavailable:
        return Refusal.DATABASE_UNAVAILABLE
    rejected = received.rejected
    if rejected is not None and rejected.media_type:
        return Refusal.UNSUPPORTED_MEDIA_TYPE
    outcome = received.outcome
    if outcome is None:  # a dry run's refusal never reaches a reply; nothing stored otherwise
        return Refusal.DATABASE_UNAVAILABLE
    return outcome


def reply(dialect: Dialect, answer: Outcome | Refusal) -> Reply:
    """The status, and the gateway's success body only for an outcome that tells it to stop
    retrying."""
    accepted = isinstance(answer, Outcome) and answer.accepted
    body = dialect.success_body if accepted else dialect.fail_body
    return Reply(reply_status(answer), body, dialect.content_type)


def response(dialect: Dialect, answer: Outcome | Refusal) -> web.Response:
    """The aiohttp response for an answer in a gateway's dialect (405 names the method)."""
    r = reply(dialect, answer)
    headers = {hdrs.ALLOW: "POST"} if answer is Refusal.METHOD_NOT_ALLOWED else None
    return web.Response(status=r.status, body=r.body, content_type=r.content_type, headers=headers)


def refuse(provider: str | None, dialect: Dialect | None, refusal: Refusal) -> web.Response:
    """A refusal outside the notification's own path (the parser, an unhandled error): counted
    for its gateway, answered in its dialect; plain text when no gateway is named (a 503 as
    JSON, for probes and load balancers)."""
    if provider is not None and dialect is not None:
        count_refusal(provider, refusal)
        return response(dialect, refusal)
    if refusal is Refusal.DATABASE_UNAVAILABLE:
        return web.json_response({"status": "unavailable"}, status=int(refusal))
    return web.Response(status=int(refusal), text=f"{HTTPStatus(refusal).phrase}\n")


def count_refusal(provider: str, answer: Outcome | Refusal) -> None:
    """Count a reply given before or without an outcome (`receiver_http_refusals_total`)."""
    if isinstance(answer, Refusal):
        metrics.http_refused(provider, int(answer))


def no_such_gateway() -> web.Response:
    """A path under /notify/ that names no gateway."""
    return web.Response(status=404, text="no such gateway\n")
