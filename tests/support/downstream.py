"""A downstream service on a real socket for forwarding tests: records every request and
answers as the test says (a status, a redirect, a reply that never comes)."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.support.service_process import HOST, free_port


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.body)
        return value

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


Answer = Callable[[Received], Awaitable[web.StreamResponse]]


async def ok(_received: Received) -> web.StreamResponse:
    return web.Response(text="ok")


class Downstream:
    """`answer` decides each reply; `received` keeps every request in arrival order."""

    def __init__(self, answer: Answer = ok) -> None:
        self.answer = answer
        self.received: list[Received] = []
        self.arrived = asyncio.Condition()
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/hooks/payments"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        received = Received(dict(request.headers), await request.read())
        async with self.arrived:
            self.received.append(received)
            self.arrived.notify_all()
        return await self.answer(received)

    async def start(self) -> Downstream:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self.runner.setup()
        await web.TCPSite(self.runner, HOST, self.port).start()
        return self

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def wait_for(self, count: int, wait_s: float = 30.0) -> list[Received]:
        """Once `count` requests have come (or fail after `wait_s`)."""
        async with asyncio.timeout(wait_s), self.arrived:
            await self.arrived.wait_for(lambda: len(self.received) >= count)
        return list(self.received)

    def ids(self) -> list[str]:
        return [r.webhook_id for r in self.received]


def new_secret() -> str:
    """A Standard Webhooks secret: "whsec_" and the base64 of 24 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
