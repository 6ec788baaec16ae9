"""The HTTP half of every order query: one POST, its reply read under a size cap and a deadline.

Every way the exchange can fail (timeout, refused connection, TLS, a reply too large, a
redirect) becomes `QueryFailed` with a reason fit for a log line, which the queriers turn into an
ERROR answer. A redirect is never followed: the request carries the merchant's API key and
signature, which go to the configured URL's origin and nowhere else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import aiohttp
from yarl import URL

from receiver.core.notification import Inbound, Notification, Outcome, Status
from receiver.errors import Rejected
from receiver.gateways import OrderRef, QueryAnswer, QueryResult

_RESULTS: dict[Status | None, QueryResult] = {
    Status.PAID: QueryResult.PAID,
    Status.FAILED: QueryResult.FAILED,
    Status.CLOSED: QueryResult.CLOSED,
    None: QueryResult.PENDING,
}
MAX_REPLY_BYTES = 64 * 1024  # an order-query reply is a few hundred bytes
_REASON_MAX = 200


class QueryFailed(Exception):
    """No usable reply: the reason says why (no secrets: URLs and error texts only)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class HttpReply:
    """A gateway's reply as received: status, headers (lower-case names), body."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    content_type: str
    charset: str | None

    def inbound(self, provider: str, *, keep: Sequence[str] = ()) -> Inbound:
        """The reply as an `Inbound`, with the headers named in `keep` (lower-case)."""
        kept = {name: self.headers[name] for name in keep if name in self.headers}
        return Inbound(
            provider=provider,
            body=self.body,
            headers=kept,
            content_type=self.content_type,
            charset=self.charset,
            remote_addr=None,
        )


async def post(
    session: aiohttp.ClientSession,
    url: str,
    *,
    data: bytes,
    headers: Mapping[str, str],
    timeout_s: float,
    max_bytes: int = MAX_REPLY_BYTES,
) -> HttpReply:
    """POST `data` and read the whole reply within `timeout_s`; QueryFailed otherwise."""
    try:
        async with asyncio.timeout(timeout_s):
            async with session.post(
                url, data=data, headers=dict(headers), allow_redirects=False
            ) as resp:
                if 300 <= resp.status < 400:
                    raise QueryFailed(redirect_reason(resp.status, resp.headers.get("Location")))
                body = await _read_capped(resp, max_bytes=max_bytes)
                return HttpReply(
                    status=resp.status,
                    headers=_first_values(resp.headers),
                    body=body,
                    content_type=resp.content_type,
                    charset=resp.charset,
                )
    except TimeoutError:
        raise QueryFailed(f"no reply within {timeout_s:g}s") from None
    except aiohttp.ClientSSLError as exc:
        raise QueryFailed(_short(f"TLS error: {exc}")) from None
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        # ClientConnectorError (refused, unknown host), ServerDisconnectedError, InvalidURL, ...
        raise QueryFailed(_short(f"{type(exc).__name__}: {exc}")) from None


def redirect_reason(status: int, location: str | None) -> str:
    """Why a redirect is an error, naming its status and the host it points to (no path: it
    may carry tokens)."""
    host = None if location is None else _host(location)
    target = f"to {host}" if host else "without a usable Location"
    return f"HTTP {status} redirect {target} not followed"


def _host(location: str) -> str | None:
    try:
        return URL(location).host
    except ValueError:
        return None


async def exchange(
    session: aiohttp.ClientSession,
    url: str,
    *,
    data: bytes,
    headers: Mapping[str, str],
    timeout_s: float,
    read: Callable[[HttpReply], QueryAnswer],
) -> QueryAnswer:
    """POST an order query and `read` its reply; no usable reply is an ERROR answer."""
    try:
        reply = await post(session, url, data=data, headers=headers, timeout_s=timeout_s)
    except QueryFailed as exc:
        return error(exc.reason)
    return read(reply)


async def _read_capped(resp: aiohttp.ClientResponse, *, max_bytes: int) -> bytes:
    if resp.content_length is not None and resp.content_length > max_bytes:
        raise QueryFailed(f"reply is larger than {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(16384):
        size += len(chunk)
        if size > max_bytes:
            raise QueryFailed(f"reply is larger than {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _first_values(headers: Mapping[str, str]) -> dict[str, str]:
    """Lower-case names; a repeated header keeps its first value."""
    kept: dict[str, str] = {}
    for name, value in headers.items():
        kept.setdefault(name.lower(), value)
    return kept


def _short(text: str) -> str:
    return text if len(text) <= _REASON_MAX else text[: _REASON_MAX - 3] + "..."


def error(reason: str) -> QueryAnswer:
    """An ERROR answer: nothing to apply, ask again at the next due time."""
    return QueryAnswer(result=QueryResult.ERROR, reason=reason)


def answered(inbound: Inbound, n: Notification) -> QueryAnswer:
    """A verified reply: its result is the status it asks for (None: still pending)."""
    return QueryAnswer(result=_RESULTS[n.target], reason=n.detail, inbound=inbound, notification=n)


_HELD = frozenset({Outcome.AMOUNT_MISMATCH, Outcome.CURRENCY_MISMATCH})


def classified(result: QueryResult, outcome: Outcome | None) -> QueryResult:
    """The operators' label for an answer once the ledger has decided it: a verified reply
    whose money does not match the order is `held` (a review is open), not what it said."""
    return QueryResult.HELD if outcome in _HELD else result


def refused(inbound: Inbound, rejected: Rejected, *, order: OrderRef) -> QueryAnswer:
    """A reply that failed verification or parsing, recorded against the order we asked about."""
    rejected.merchant_id = order.merchant_id
    rejected.out_trade_no = order.out_trade_no
    return QueryAnswer(
        result=QueryResult.REFUSED, reason=rejected.reason, inbound=inbound, rejected=rejected
    )
