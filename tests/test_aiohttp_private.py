"""Each aiohttp internal the service relies on (receiver/http/aiohttp_private.py), pinned: an
aiohttp release that changes one fails here, by name, rather than silently disabling the head
deadline or the connection cap."""

from __future__ import annotations

import asyncio
import inspect

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from receiver.http.aiohttp_private import (
    ProtocolRunner,
    forget_interim_reply,
    reply_started,
    waiting_for_head,
)


class Marked(web.RequestHandler):
    """A request handler that says it was used."""

    made = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        type(self).made += 1
        super().connection_made(transport)


class MarkingRunner(ProtocolRunner):
    def make_protocol(self, server: web.Server) -> Marked:
        return Marked(server, loop=asyncio.get_running_loop())


async def hello(_request: web.Request) -> web.Response:
    return web.Response(text="hi")


async def test_sites_serve_the_runners_protocol_factory() -> None:
    app = web.Application()
    app.router.add_get("/", hello)
    runner = MarkingRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    finally:
        await runner.cleanup()
    assert reply.startswith(b"HTTP/1.1 200")
    assert Marked.made == 1  # the connection was served by the factory's handler


async def test_the_runner_hands_sites_a_factory_only_once_set_up() -> None:
    runner = MarkingRunner(web.Application())
    assert runner.server is None
    await runner.setup()
    try:
        assert callable(runner.server)
    finally:
        await runner.cleanup()


async def test_request_handler_has_the_head_waiter() -> None:
    # aiohttp sets `_waiter` to a future while its request loop waits for a head.
    assert "_waiter" in web.RequestHandler.__slots__
    source = inspect.getsource(web.RequestHandler.start)
    assert "self._waiter = loop.create_future()" in source


async def test_waiting_for_head_reads_the_waiter() -> None:
    class Fake:
        _waiter: asyncio.Future[None] | None = None

    fake = Fake()
    assert not waiting_for_head(fake)  # type: ignore[arg-type]
    fake._waiter = asyncio.get_running_loop().create_future()
    assert waiting_for_head(fake)  # type: ignore[arg-type]
    fake._waiter.set_result(None)
    assert not waiting_for_head(fake)  # type: ignore[arg-type]


def test_stream_writers_count_their_output() -> None:
    assert "output_size" in vars(AbstractStreamWriter)
    source = inspect.getsource(web.RequestHandler)
    assert "output_size" in source  # aiohttp's own handler reads and resets it too


async def seams(request: web.Request) -> web.Response:
    before = reply_started(request)
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    during = reply_started(request)
    forget_interim_reply(request)
    return web.Response(text=f"{before} {during} {reply_started(request)}")


async def test_reply_started_and_the_interim_reply_forgotten(aiohttp_client) -> None:
    app = web.Application()
    app.router.add_get("/", seams)
    client = await aiohttp_client(app)
    resp = await client.get("/")
    assert resp.status == 200
    assert await resp.text() == "False True False"
