"""A stand-in downstream service: receives forwarded order events, verifies their Standard
Webhooks signatures, reports each, and answers errors on purpose when asked (`--fail-first N`:
the first N attempts of each event get a 500, so the receiver's retries show).

`receiver simulate downstream` runs it; `receiver demo` forwards its events to one.
"""

from __future__ import annotations

import base64
import collections
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from receiver.events.signing import secret_key, verify

HOOK_PATH = "/hooks/payments"
TOLERANCE_S = 300  # as the Standard Webhooks libraries: older or newer timestamps are refused
MAX_BODY = 1 << 20


def new_secret() -> str:
    """A fresh `whsec_` secret."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


@dataclass
class StandInDownstream:
    """What the stand-in verifies with, how it answers, and what it has seen."""

    secret: str = field(repr=False)
    fail_first: int = 0  # attempts of each event answered 500 before one is accepted
    on_report: Callable[[dict[str, Any]], None] = lambda _report: None
    attempts: collections.Counter[str] = field(default_factory=collections.Counter)
    accepted: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0  # requests whose signature did not verify

    def receive(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        """The status to answer, and the report line for one request."""
        msg_id = headers.get("webhook-id", "")
        if not self._verified(headers, body):
            self.refused += 1
            return 401, {"webhook_id": msg_id, "verified": False, "answered": 401}
        self.attempts[msg_id] += 1
        attempt = self.attempts[msg_id]
        event = json.loads(body)
        status = 500 if attempt <= self.fail_first else 200
        report = {
            "webhook_id": msg_id,
            "verified": True,
            "attempt": attempt,
            "answered": status,
            "type": event.get("type"),
            "data": event.get("data"),
        }
        if status == 200:
            self.accepted.append(event)
        return status, report

    def _verified(self, headers: dict[str, str], body: bytes) -> bool:
        try:
            fresh = abs(time.time() - int(headers.get("webhook-timestamp", ""))) <= TOLERANCE_S
        except ValueError:
            return False
        return fresh and verify(secret_key(self.secret), headers=headers, body=body)


DOWNSTREAM = web.AppKey("downstream", StandInDownstream)


async def _hook(request: web.Request) -> web.Response:
    downstream = request.app[DOWNSTREAM]
    body = await request.read()
    headers = {k.lower(): v for k, v in request.headers.items()}
    status, report = downstream.receive(headers, body)
    downstream.on_report(report)
    return web.json_response({"ok": status == 200}, status=status)


def create_downstream_app(downstream: StandInDownstream) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app[DOWNSTREAM] = downstream
    app.router.add_post(HOOK_PATH, _hook)
    return app


@asynccontextmanager
async def serving_downstream(
    downstream: StandInDownstream, *, host: str, port: int
) -> AsyncIterator[str]:
    """Serve the stand-in on host:port (0: any free port); yields the hook URL."""
    runner = web.AppRunner(create_downstream_app(downstream), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
        bound = runner.addresses[0][1]
        yield f"http://{host}:{bound}{HOOK_PATH}"
    finally:
        await runner.cleanup()


def forward_snippet(url: str, secret: str) -> str:
    """The receiver's `[[forward]]` table for this stand-in."""
    return f'[[forward]]\nname = "stand-in"\nurl = "{url}"\nsecret = "{secret}"\n'
