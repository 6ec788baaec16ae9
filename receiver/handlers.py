"""Thin HTTP: read the body -> gateway adapter -> ledger -> reply in the gateway's dialect."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web

from receiver.appkeys import CONFIG, GATEWAYS, LEDGER
from receiver.config import Network
from receiver.errors import DatabaseUnavailable, Rejected
from receiver.gateways import Gateway, Reply
from receiver.ledger import Result
from receiver.logging import get_logger
from receiver.notification import Inbound, Outcome

log = get_logger(__name__)


class BodyRefused(Exception):
    """The body was too large or too slow; the reply's status says which."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Handled:
    """What one notification came to, for the reply and the log line."""

    reply: Reply
    result: Result | None
    reason: str = ""


async def notify(request: web.Request) -> web.StreamResponse:
    """POST /notify/{provider}: one gateway notification."""
    gateway = request.app[GATEWAYS].get(request.match_info["provider"])
    if gateway is None:
        raise web.HTTPNotFound(text="no such gateway\n")
    started = time.perf_counter()
    handled = await _handle(request, gateway)
    _log_notification(gateway.provider, handled, started)
    return _response(handled.reply, allow_post=request.method != "POST")


async def _handle(request: web.Request, gateway: Gateway) -> Handled:
    if request.method != "POST":
        return _refused(gateway, 405, "method not allowed")
    config = request.app[CONFIG].server
    try:
        body = await read_body(
            request, limit=config.max_body_bytes, timeout_s=config.read_timeout_s
        )
    except BodyRefused as exc:
        return _refused(gateway, exc.status, exc.reason)
    inbound = Inbound(
        provider=gateway.provider,
        body=body,
        headers=request.headers,
        content_type=request.content_type,
        charset=request.charset,
        remote_addr=client_address(
            request.remote, request.headers.get("X-Forwarded-For"), config.trusted_proxies
        ),
    )
    try:
        return await _process(request.app, gateway, inbound)
    except DatabaseUnavailable as exc:
        return Handled(gateway.reply(None), None, str(exc))


async def _process(app: web.Application, gateway: Gateway, inbound: Inbound) -> Handled:
    ledger = app[LEDGER]
    try:
        _check_source(gateway, inbound.remote_addr)
        notification = gateway.parse(inbound)
    except Rejected as rejected:
        result = await ledger.reject(inbound, rejected)
        reply = gateway.reply(rejected.outcome)
        if rejected.http_status is not None:
            reply = Reply(rejected.http_status, reply.body, reply.content_type)
        return Handled(reply, result, rejected.reason)
    result = await ledger.apply(inbound, notification)
    return Handled(gateway.reply(result.outcome), result, result.detail)


def _check_source(gateway: Gateway, remote_addr: str | None) -> None:
    allowed = gateway.allowed_ips
    if allowed and not address_in(remote_addr, allowed):
        raise Rejected(Outcome.IP_DENIED, f"source address {remote_addr} not allowed")


def _refused(gateway: Gateway, status: int, reason: str) -> Handled:
    fail = gateway.reply(Outcome.MALFORMED)
    return Handled(Reply(status, fail.body, fail.content_type), None, reason)


def _response(reply: Reply, *, allow_post: bool) -> web.Response:
    headers = {"Allow": "POST"} if allow_post and reply.status == 405 else None
    return web.Response(
        status=reply.status, body=reply.body, content_type=reply.content_type, headers=headers
    )


async def read_body(request: web.Request, *, limit: int, timeout_s: float) -> bytes:
    """The whole body, refused with 413 past `limit` bytes and 408 past `timeout_s`."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise BodyRefused(413, f"body of {declared} bytes is over the {limit}-byte limit")
    if request.content.is_eof():  # usual: the body came with the headers, nothing to wait for
        body = await request.content.read()
        if len(body) > limit:
            raise BodyRefused(413, f"body is over the {limit}-byte limit")
        return body
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.content.iter_chunked(16384):
                size += len(chunk)
                if size > limit:
                    raise BodyRefused(413, f"body is over the {limit}-byte limit")
                chunks.append(chunk)
    except TimeoutError:
        raise BodyRefused(408, f"body not received within {timeout_s:g} s") from None
    return b"".join(chunks)


def client_address(
    peer: str | None, forwarded_for: str | None, trusted: Sequence[Network]
) -> str | None:
    """The client's address: the peer, or, behind a trusted proxy, the last untrusted hop."""
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
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _log_notification(provider: str, handled: Handled, started: float) -> None:
    result = handled.result
    fields = {
        "provider": provider,
        "http_status": handled.reply.status,
        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
        "reason": handled.reason,
    }
    if result is not None:
        fields |= {
            "merchant_id": result.merchant_id,
            "out_trade_no": result.out_trade_no,
            "outcome": result.outcome.value,
            "notification_id": result.notification_id,
            "order_id": result.order_id,
            "from_status": result.from_status and result.from_status.value,
            "to_status": result.to_status and result.to_status.value,
        }
    level = "info" if handled.reply.status == 200 else "warning"
    if handled.reply.status == 503:
        level = "error"
    getattr(log, level)("notification", **fields)


async def healthz(_request: web.Request) -> web.Response:
    """200 while the process runs."""
    return web.json_response({"status": "ok"})
