"""The transport under the handlers: client connections, what aiohttp's HTTP parser refuses, and
running out of file descriptors (SPEC: Connections).

- A connection that has not sent a complete request head within `server.header_timeout_s` is
  closed (aiohttp alone would wait `keepalive_timeout` from the start, however slowly the head
  trickles in); an idle keep-alive connection is closed after `server.keepalive_timeout_s`.
- Past `server.max_connections` open connections (capped below the descriptor limit, so that
  the database pool can still connect), a new connection is closed at once; the requests in
  progress on the others finish.
- What the parser refuses (bad header bytes, oversized or too many headers, unknown methods,
  conflicting lengths, broken chunks) is answered 400 in the gateway's dialect when the request
  line named a gateway, and logged as one JSON line that quotes no header value.
- `socket.accept() out of system resource` is logged at most once a second.

`Runner` is aiohttp's `AppRunner` whose sites hand out `ReceiverRequestHandler`s.
"""

from __future__ import annotations

import asyncio
import re
import resource
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import hdrs, web

from receiver.config import ServerConfig
from receiver.gateways import Gateway
from receiver.http.aiohttp_private import ProtocolRunner, reply_started, waiting_for_head
from receiver.http.appkeys import CONFIG, GATEWAYS
from receiver.http.handlers import describe_parser_error
from receiver.http.replies import SERVER_NAME, Refusal, refuse
from receiver.logging import get_logger

log = get_logger(__name__)

# Descriptors kept free of client connections: the database pool, the listening sockets, logs.
RESERVED_DESCRIPTORS = 64
ACCEPT_FAILED = "socket.accept() out of system resource"
# The request line of a notification, as far as needed to pick the gateway's dialect.
_GATEWAY_PATH = re.compile(rb" /notify/([a-z0-9_-]{1,32})(?:[ ?/#]|$)")
_PATH_MARK = b" /notify/"
_TAIL = 48  # bytes kept from the previous chunk, in case a request line is split


def raise_open_files_limit() -> int:
    """Raise this process's soft descriptor limit to the hard one; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # RLIM_INFINITY refused by some kernels: keep the soft one
            pass
    return soft


def connection_limit(configured: int, *, metrics_connections: int = 0) -> int:
    """`server.max_connections`, lowered to leave descriptors for everything else: the reserve,
    and the metrics listener's own connections (at most `metrics_connections`)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured
    return max(1, min(configured, soft - RESERVED_DESCRIPTORS - metrics_connections))


class Throttle:
    """True at most once per `interval_s`; counts the calls it swallowed in between."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self._next = 0.0
        self.suppressed = 0

    def ready(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            self.suppressed += 1
            return False
        self._next = now + self.interval_s
        return True

    def take_suppressed(self) -> int:
        """How many calls were swallowed since the last time this was asked."""
        count, self.suppressed = self.suppressed, 0
        return count


class OpenConnections:
    """The open client connections of one server, against their limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self.refused = Throttle()

    def admit(self) -> bool:
        """Count one more connection; False (not counted) when the limit is reached."""
        if self.count >= self.limit:
            if self.refused.ready():
                log.warning(
                    "connection_limit_reached",
                    limit=self.limit,
                    closed_since_last=self.refused.take_suppressed() + 1,
                )
            return False
        self.count += 1
        return True


class ReceiverRequestHandler(web.RequestHandler):
    """aiohttp's connection handler, with the head deadline, the connection limit, and parser
    refusals answered in the gateway's dialect."""

    __slots__ = (
        "_connections",
        "_counted",
        "_gateway_hint",
        "_gateways",
        "_head_timeout",
        "_head_timer",
        "_tail",
    )

    def __init__(
        self,
        manager: web.Server,
        *,
        server: ServerConfig,
        connections: OpenConnections,
        gateways: Mapping[str, Gateway],
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, keepalive_timeout=server.keepalive_timeout_s, **kwargs)
        self._head_timeout = server.header_timeout_s
        self._connections = connections
        self._gateways = gateways
        self._counted = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._gateway_hint: Gateway | None = None
        self._tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._counted = self._connections.admit()
        if not self._counted:
            self.force_close()
            return
        self._arm_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._counted:
            self._counted = False
            self._connections.count -= 1
        self._disarm_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._note_gateway(data)
        super().data_received(data)
        # Armed only for a head that is still incomplete once these bytes are parsed: a head
        # that arrives whole (the usual case) never costs a timer.
        if self._waiting_for_head():
            if self._head_timer is None:
                self._arm_head_timer()  # a head begun (on a kept-alive connection) and not whole
        elif self._head_timer is not None:
            self._disarm_head_timer()  # a complete head: the handler takes over

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A reply in the gateway's dialect and one log line, for what the parser refused (and,
        should it ever happen, an error outside the handlers)."""
        if reply_started(request):  # as aiohttp: a reply is under way, nothing to add
            raise ConnectionError("response already started")
        refusal = Refusal.BAD_REQUEST if status < 500 else Refusal.DATABASE_UNAVAILABLE
        gateway = self._gateway_hint
        log.warning(
            "request_refused",
            provider=gateway.provider if gateway is not None else None,
            http_status=int(refusal),
            reason=describe_parser_error(exc),
            remote_addr=request.remote,
        )
        if gateway is None:
            resp = refuse(None, None, refusal)
        else:
            resp = refuse(gateway.provider, gateway.dialect, refusal)
        resp.headers[hdrs.SERVER] = SERVER_NAME
        resp.force_close()
        return resp

    def _waiting_for_head(self) -> bool:
        return waiting_for_head(self)

    def _arm_head_timer(self) -> None:
        loop = asyncio.get_running_loop()
        self._head_timer = loop.call_later(self._head_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._waiting_for_head():
            self.force_close()

    def _note_gateway(self, data: bytes) -> None:
        """Remember the gateway the latest request line names: when the parser refuses what
        follows, the path may be all that could be read."""
        chunk = self._tail + data if self._tail else data
        at = chunk.rfind(_PATH_MARK)
        if at >= 0:
            found = _GATEWAY_PATH.match(chunk, at)
            if found is not None:
                self._gateway_hint = self._gateways.get(found.group(1).decode("ascii"))
        self._tail = chunk[-_TAIL:]


class Runner(ProtocolRunner):
    """aiohttp's AppRunner for the receiver: its sites serve `ReceiverRequestHandler`s, and
    accept failures are logged at most once a second while it runs."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        kwargs.setdefault("access_log", None)
        super().__init__(app, **kwargs)
        config = app[CONFIG]
        configured = config.server.max_connections
        scrapes = config.metrics.max_connections if config.metrics.port else 0
        self._connections = OpenConnections(
            connection_limit(configured, metrics_connections=scrapes)
        )
        if self._connections.limit < configured:
            log.warning(
                "max_connections_lowered",
                configured=configured,
                limit=self._connections.limit,
                reason="the open-files limit leaves no room for more (raise LimitNOFILE)",
            )
        self._previous_handler: Any = None

    @property
    def connections(self) -> OpenConnections:
        """The open client connections and their limit."""
        return self._connections

    def make_protocol(self, server: web.Server) -> ReceiverRequestHandler:
        """A `ReceiverRequestHandler` for one client connection."""
        gateways = self.app[GATEWAYS]
        return ReceiverRequestHandler(
            server,
            loop=asyncio.get_running_loop(),
            server=self.app[CONFIG].server,
            connections=self._connections,
            gateways=gateways,
            access_log=None,
            auto_decompress=False,  # a body is never decoded: no decompression bombs
        )

    async def setup(self) -> None:
        loop = asyncio.get_running_loop()
        self._previous_handler = loop.get_exception_handler()
        loop.set_exception_handler(_AcceptFailureLog(self._previous_handler))
        await super().setup()

    async def cleanup(self) -> None:
        try:
            await super().cleanup()
        finally:
            asyncio.get_running_loop().set_exception_handler(self._previous_handler)


class _AcceptFailureLog:
    """An event-loop exception handler: accept failures (out of descriptors) as one line a
    second at most; everything else to the handler that was there before."""

    def __init__(self, previous: Any) -> None:
        self._previous = previous
        self._throttle = Throttle()

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != ACCEPT_FAILED:
            if self._previous is not None:
                self._previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        if self._throttle.ready():
            exc = context.get("exception")
            log.error(
                "accept_failed",
                reason=getattr(exc, "strerror", None) or ACCEPT_FAILED,
                failures_since_last=self._throttle.take_suppressed() + 1,
            )
