"""Thin HTTP: read the body -> gateway adapter -> ledger -> reply in the gateway's dialect."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from receiver import metrics
from receiver.appkeys import CONFIG, GATEWAYS, LEDGER, UNVERIFIED
from receiver.config import Network
from receiver.errors import DatabaseUnavailable, Rejected
from receiver.gateways import (
    Gateway,
    Refusal,
    Reply,
    reply,
    reply_status,
    with_signature_headers,
)
from receiver.ledger import Result
from receiver.logging import get_logger
from receiver.notification import Inbound, Outcome
from receiver.unverified import UNVERIFIED_OUTCOMES

log = get_logger(__name__)

NOTIFY_ROUTE = "notify"  # the name of the route `/notify/{provider}`
NOTIFY_PREFIX = "/notify/"  # every path under it that names no gateway is refused and logged
_LOGGED_PATH_MAX = 200  # a path quoted in the log is cut to this many characters

# The Server header every reply carries: the service, never the aiohttp and Python versions.
SERVER_NAME = "receiver"
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


# Not frozen: built once per request and read right away, it never travels; freezing would cost
# an object.__setattr__ per field on every notification.
@dataclass(slots=True, kw_only=True)
class Handled:
    """What one notification came to, for the reply and the log line."""

    answer: Outcome | Refusal
    remote_addr: str | None
    result: Result | None = None
    reason: str = ""
    merchant_id: str | None = None  # what was read, when nothing was stored (503)
    out_trade_no: str | None = None


async def notify(request: web.Request) -> web.StreamResponse:
    """POST /notify/{provider}: one gateway notification."""
    gateway = request.app[GATEWAYS].get(request.match_info["provider"])
    if gateway is None:
        return await no_such_gateway(request)
    started = time.perf_counter()
    handled = await _handle(request, gateway)
    seconds = time.perf_counter() - started
    _measure(gateway.provider, handled, seconds)
    if handled.answer is not Refusal.TOO_MANY_UNVERIFIED:  # the limiter logs a summary instead
        _log_notification(gateway.provider, handled, seconds)
    return response(reply(gateway.dialect, handled.answer))


async def no_such_gateway(request: web.BaseRequest) -> web.StreamResponse:
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
    return web.Response(status=404, text="no such gateway\n")


async def _handle(request: web.Request, gateway: Gateway) -> Handled:
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
        return Handled(answer=exc.refusal, reason=exc.reason, remote_addr=remote_addr)
    inbound = Inbound(
        provider=gateway.provider,
        body=body,
        headers=request.headers,
        content_type=request.content_type,
        charset=request.charset,
        remote_addr=remote_addr,
    )
    return await _process(app, gateway, inbound)


def _check_request(request: web.Request) -> None:
    """Refuse what needs no body to refuse: another method, an expectation we do not meet."""
    if request.method != "POST":
        raise Refused(Refusal.METHOD_NOT_ALLOWED, "method not allowed")
    expect = request.headers.get(hdrs.EXPECT)
    if expect is not None and expect.lower() != "100-continue":
        raise Refused(Refusal.BAD_REQUEST, "Expect other than 100-continue")


async def _process(app: web.Application, gateway: Gateway, inbound: Inbound) -> Handled:
    try:
        check_source(gateway, inbound.remote_addr)
        _check_encoding(inbound)
        notification = gateway.parse(inbound)
    except Rejected as rejected:
        return await _reject(app, inbound, with_signature_headers(gateway, inbound, rejected))
    try:
        result = await app[LEDGER].apply(inbound, notification)
    except DatabaseUnavailable as exc:
        return _unavailable(
            exc,
            inbound,
            merchant_id=notification.merchant_id,
            out_trade_no=notification.out_trade_no,
        )
    return Handled(
        answer=result.outcome, result=result, reason=result.detail, remote_addr=inbound.remote_addr
    )


async def _reject(app: web.Application, inbound: Inbound, rejected: Rejected) -> Handled:
    if rejected.outcome in UNVERIFIED_OUTCOMES and not app[UNVERIFIED].admit(inbound.remote_addr):
        return Handled(answer=Refusal.TOO_MANY_UNVERIFIED, remote_addr=inbound.remote_addr)
    try:
        result = await app[LEDGER].reject(inbound, rejected)
    except DatabaseUnavailable as exc:
        return _unavailable(
            exc, inbound, merchant_id=rejected.merchant_id, out_trade_no=rejected.out_trade_no
        )
    return Handled(
        answer=rejected.refusal or rejected.outcome,
        result=result,
        reason=rejected.reason,
        remote_addr=inbound.remote_addr,
    )


def _unavailable(
    exc: DatabaseUnavailable,
    inbound: Inbound,
    *,
    merchant_id: str | None,
    out_trade_no: str | None,
) -> Handled:
    return Handled(
        answer=Refusal.DATABASE_UNAVAILABLE,
        reason=str(exc),
        remote_addr=inbound.remote_addr,
        merchant_id=merchant_id,
        out_trade_no=out_trade_no,
    )


def check_source(gateway: Gateway, remote_addr: str | None) -> None:
    """IP_DENIED when the gateway has an allow-list and the address is not on it."""
    allowed = gateway.allowed_ips
    if allowed and not address_in(remote_addr, allowed):
        raise Rejected(Outcome.IP_DENIED, f"source address {remote_addr} not allowed")


def _check_encoding(inbound: Inbound) -> None:
    """Gateways never compress: any Content-Encoding but identity is refused, never decoded
    (the server does not decompress either), so a decompression bomb costs nothing."""
    encoding = inbound.headers.get(hdrs.CONTENT_ENCODING)
    if encoding and any(token.strip().lower() not in _IDENTITY for token in encoding.split(",")):
        raise Rejected(
            Outcome.MALFORMED,
            "a Content-Encoding other than identity is not accepted",
            refusal=Refusal.UNSUPPORTED_MEDIA_TYPE,
        )


def response(r: Reply) -> web.Response:
    """The aiohttp response for a reply (405 names the method allowed)."""
    headers = {hdrs.ALLOW: "POST"} if r.status == Refusal.METHOD_NOT_ALLOWED else None
    return web.Response(status=r.status, body=r.body, content_type=r.content_type, headers=headers)


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
            return hop if _is_ip(hop) else peer
    return hops[0] if _is_ip(hops[0]) else peer


def address_in(address: str | None, networks: Sequence[Network]) -> bool:
    """True when `address` is an IP inside one of `networks`."""
    if address is None or not _is_ip(address):
        return False
    ip = ipaddress.ip_address(address)
    return any(ip in net for net in networks)


def _is_ip(text: str) -> bool:
    # ipaddress takes any text after '%' as an IPv6 zone, NUL and lone surrogates included,
    # which the database would refuse: a client address never has a zone.
    if "%" in text:
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _measure(provider: str, handled: Handled, seconds: float) -> None:
    answer = handled.answer
    metrics.replied(
        provider,
        seconds=seconds,
        refused_status=int(answer) if isinstance(answer, Refusal) else None,
    )


def _log_notification(provider: str, handled: Handled, seconds: float) -> None:
    status = reply_status(handled.answer)
    fields = {
        "provider": provider,
        "http_status": status,
        "duration_ms": round(seconds * 1000, 2),
        "reason": handled.reason,
        "remote_addr": handled.remote_addr,
    }
    result = handled.result
    if result is None:
        fields |= {"merchant_id": handled.merchant_id, "out_trade_no": handled.out_trade_no}
    else:
        fields |= {
            "merchant_id": result.merchant_id,
            "out_trade_no": result.out_trade_no,
            "outcome": result.outcome.value,
            "notification_id": result.notification_id,
            "order_id": result.order_id,
            "from_status": result.from_status and result.from_status.value,
            "to_status": result.to_status and result.to_status.value,
        }
    level = "info" if status == 200 else "error" if status >= 500 else "warning"
    # bind() is the logger structlog cached, as `log.info` would find it, without the lazy
    # proxy's __getattr__ (a failed attribute lookup first) on every notification.
    getattr(log.bind(), level)("notification", **fields)


async def healthz(_request: web.Request) -> web.Response:
    """200 while the process runs."""
    return web.json_response({"status": "ok"})
