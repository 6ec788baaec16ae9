"""Thin HTTP: read the body -> gateway adapter -> ledger -> reply in the gateway's dialect."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence

from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from receiver import metrics
from receiver.core.addresses import Network, address_in, is_ip
from receiver.core.notification import Inbound, Outcome
from receiver.gateways import Gateway
from receiver.http.appkeys import CONFIG, GATEWAYS, LEDGER, UNVERIFIED
from receiver.http.replies import (
    Refusal,
    answer_of,
    count_refusal,
    no_such_gateway,
    reply_status,
    response,
)
from receiver.logging import get_logger
from receiver.sources.intake import Received, receive

log = get_logger(__name__)

NOTIFY_ROUTE = "notify"  # the name of the route `/notify/{provider}`
NOTIFY_PREFIX = "/notify/"  # every path under it that names no gateway is refused and logged
_LOGGED_PATH_MAX = 200  # a path quoted in the log is cut to this many characters
_IDENTITY = frozenset({"", "identity"})
# Where aiohttp's parser messages start quoting what they refused (an apostrophe inside a word,
# as in "can't", is not a quote).
_QUOTING = re.compile(r"""[:"(\[{<]|(?<!\w)'""")


class Refused(Exception):
    """The request is refused before a notification could be read; `refusal` says why."""

    def __init__(self, refusal: Refusal, reason: str) -> None:
        super().__init__(reason)
        self.refusal = refusal
        self.reason = reason


async def notify(request: web.Request) -> web.StreamResponse:
    """POST /notify/{provider}: one gateway notification."""
    gateway = request.app[GATEWAYS].get(request.match_info["provider"])
    if gateway is None:
        return await unknown_gateway(request)
    started = time.perf_counter()
    answer, received = await _handle(request, gateway)
    seconds = time.perf_counter() - started
    metrics.replied(gateway.provider, seconds=seconds)
    count_refusal(gateway.provider, answer)
    if answer is not Refusal.TOO_MANY_UNVERIFIED:  # the limiter logs a summary instead
        _log_notification(gateway.provider, answer, received, seconds)
    return response(gateway.dialect, answer)


async def unknown_gateway(request: web.BaseRequest) -> web.StreamResponse:
    """404 for a path under /notify/ that names no gateway (`/notify/wechat`, `/notify/gopay/`),
    with one log line: a misconfigured notify URL must be visible to the operator."""
    log.warning(
        "request_refused",
        provider=None,
        http_status=404,
        reason="no such gateway",
        method=request.method[:16],
        # As sent (percent-encoded, no query string): a decoded path could carry line breaks.
        path=request.rel_url.raw_path[:_LOGGED_PATH_MAX],
        remote_addr=request.remote,
    )
    return no_such_gateway()


async def _handle(request: web.Request, gateway: Gateway) -> tuple[Outcome | Refusal, Received]:
    app = request.app
    config = app[CONFIG].server
    trusted = config.trusted_proxies
    # Without trusted proxies the header cannot matter: not even looked up.
    forwarded_for = request.headers.get("X-Forwarded-For") if trusted else None
    remote_addr = client_address(request.remote, forwarded_for, trusted)
    try:
        _check_request(request)
        body = body_at_hand(request, limit=config.max_body_bytes)
        if body is None:
            body = await read_body(
                request, limit=config.max_body_bytes, timeout_s=config.read_timeout_s
            )
    except Refused as exc:
        return exc.refusal, Received(remote_addr=remote_addr, note=exc.reason)
    inbound = Inbound(
        provider=gateway.provider,
        body=body,
        headers=request.headers,
        content_type=request.content_type,
        charset=request.charset,
        remote_addr=remote_addr,
    )
    received = await receive(gateway, inbound, ledger=app[LEDGER], admit=app[UNVERIFIED].admit)
    return answer_of(received), received


def _check_request(request: web.Request) -> None:
    """Refuse what needs no body to refuse: another method, an expectation we do not meet."""
    if request.method != "POST":
        raise Refused(Refusal.METHOD_NOT_ALLOWED, "method not allowed")
    expect = request.headers.get(hdrs.EXPECT)
    if expect is not None and expect.lower() != "100-continue":
        raise Refused(Refusal.BAD_REQUEST, "Expect other than 100-continue")


def body_at_hand(request: web.Request, *, limit: int) -> bytes | None:
    """The whole body when its declared length is within `limit` and all of it came with the
    head (the usual case: no coroutine to run); None otherwise, for `read_body`."""
    declared = request.content_length
    if declared is not None and declared <= limit and request.content.is_eof():
        return request.content.read_nowait()  # the declared bytes, all there: no read() awaits
    return None


async def read_body(request: web.Request, *, limit: int, timeout_s: float) -> bytes:
    """The whole body, refused with 413 past `limit` bytes, 408 past `timeout_s`, 400 when its
    framing is broken (chunk sizes, a length the body does not have)."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise Refused(
            Refusal.BODY_TOO_LARGE, f"body of {declared} bytes is over the {limit}-byte limit"
        )
    try:
        return await _read_limited(request, limit=limit, timeout_s=timeout_s)
    except (HttpProcessingError, web.RequestPayloadError, ConnectionError) as exc:
        raise Refused(Refusal.BAD_REQUEST, f"body not readable: {_framing(exc)}") from None


async def _read_limited(request: web.Request, *, limit: int, timeout_s: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.content.iter_chunked(16384):
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                chunks.append(chunk)
    except TimeoutError:
        raise Refused(Refusal.BODY_TIMEOUT, f"body not received within {timeout_s:g} s") from None
    return b"".join(chunks)


def _too_large(limit: int) -> Refused:
    return Refused(Refusal.BODY_TOO_LARGE, f"body is over the {limit}-byte limit")


def _framing(exc: BaseException) -> str:
    if isinstance(exc, ConnectionError):
        return "the client went away"
    return describe_parser_error(exc)


def describe_parser_error(exc: BaseException | None) -> str:
    """What aiohttp's HTTP parser refused, in its own words but without the bytes it quotes
    (its messages quote the offending line, which may be a signature header)."""
    if exc is None:
        return "request refused by the HTTP parser"
    message = getattr(exc, "message", "") or ""
    first = message.splitlines()[0] if message else ""
    words = _QUOTING.split(first, maxsplit=1)[0].strip().rstrip(".")
    return f"{type(exc).__name__}: {words[:120]}" if words else type(exc).__name__


def client_address(
    peer: str | None, forwarded_for: str | None, trusted: Sequence[Network]
) -> str | None:
    """The client's address: the peer, or, behind a trusted proxy, the last untrusted hop.

    A hop that is not a plain IP address (garbage, bytes that are not text, an IPv6 zone) is no
    usable address: the peer's is used.
    """
    if not forwarded_for or not trusted or not address_in(peer, trusted):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",")]
    for hop in reversed(hops):
        if not address_in(hop, trusted):
            return hop if is_ip(hop) else peer
    return hops[0] if is_ip(hops[0]) else peer


def _log_notification(
    provider: str, answer: Outcome | Refusal, received: Received, seconds: float
) -> None:
    status = reply_status(answer)
    fields = received.fields()
    fields |= {
        "provider": provider,
        "http_status": status,
        "duration_ms": round(seconds * 1000, 2),
        "remote_addr": received.remote_addr,
    }
    level = "info" if status == 200 else "error" if status >= 500 else "warning"
    # bind() is the logger structlog cached, as `log.info` would find it, without the lazy
    # proxy's __getattr__ (a failed attribute lookup first) on every notification.
    getattr(log.bind(), level)("notification", **fields)


async def healthz(_request: web.Request) -> web.Response:
    """200 while the process runs."""
    return web.json_response({"status": "ok"})
