"""Every use of aiohttp beyond its public API, in one place, each with why and the test that
breaks loudly if an aiohttp release changes it (tests/test_aiohttp_private.py).

aiohttp has no public hook for three things the service needs:
- a protocol of its own per connection (the head deadline, the connection cap, parser refusals
  in the gateway's dialect): `AppRunner.server` is what its sites hand to `loop.create_server`,
  so a runner whose `server` is a factory of our handlers gets them;
- whether a connection is waiting for a request head: `RequestHandler._waiter`, which aiohttp's
  own keep-alive check reads the same way;
- whether a reply has started on a request (`StreamWriter.output_size`, declared on the public
  `AbstractStreamWriter` but documented nowhere), and forgetting the interim
  `100 Continue` so that it does not count as the response, as aiohttp's own handler does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web


class ProtocolRunner(web.AppRunner):
    """An `AppRunner` whose sites serve the protocol `make_protocol(server)` builds."""

    def make_protocol(self, server: web.Server) -> Any:
        """One connection's protocol (a `web.RequestHandler`) for aiohttp's low-level server."""
        raise NotImplementedError

    @property
    def server(self) -> Callable[[], Any] | None:  # type: ignore[override]
        # Sites call `loop.create_server(runner.server, ...)`: a factory works there.
        inner = super().server
        if inner is None:
            return None
        return lambda: self.make_protocol(inner)


def waiting_for_head(handler: web.RequestHandler) -> bool:
    """True while a connection has no complete request head queued."""
    waiter = handler._waiter
    return waiter is not None and not waiter.done()


def reply_started(request: web.BaseRequest) -> bool:
    """True once bytes of a reply have been written for this request."""
    writer = request.writer
    return writer is not None and writer.output_size > 0


def forget_interim_reply(request: web.BaseRequest) -> None:
    """After writing `100 Continue`: it is not the response (aiohttp's own handler does this)."""
    request.writer.output_size = 0
