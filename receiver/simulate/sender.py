"""Deliver a notification as the gateways do: send, and resend on their schedule until a reply
acknowledges it. `time_scale` shrinks the waits, so GoPay's three hours pass in seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import aiohttp

from receiver.gateways.asking import QueryFailed, post
from receiver.gateways.gopay.notify import SUCCESS_BODY

#: GoPay's documented waits after a non-success reply or a timeout (about 3 h 4 min in all).
GOPAY_RETRY_S: tuple[float, ...] = (15, 15, 30, 180, 1800, 1800, 1800, 1800, 3600)
#: Baofoo "resends 2 to 10 times" on an undocumented schedule: four resends, spread out.
BAOFOO_RETRY_S: tuple[float, ...] = (30, 60, 300, 600)
ATTEMPT_TIMEOUT_S = 10.0
_REPLY_SHOWN = 64

Request = tuple[bytes, Mapping[str, str]]


@dataclass(frozen=True, slots=True)
class Attempt:
    """One delivery attempt: the HTTP status (None: no reply) and what came back."""

    number: int
    status: int | None
    reply: str
    acknowledged: bool


@dataclass(frozen=True, slots=True)
class Delivery:
    """Every attempt made for one notification."""

    attempts: tuple[Attempt, ...]

    @property
    def acknowledged(self) -> bool:
        """True when the receiver's last reply made the gateway stop."""
        return bool(self.attempts) and self.attempts[-1].acknowledged


def gopay_acknowledges(status: int, body: bytes) -> bool:
    """GoPay stops on HTTP 200 with exactly SUCCESS."""
    return status == 200 and body == SUCCESS_BODY


def baofoo_acknowledges(status: int, body: bytes) -> bool:
    """Baofoo strips leading spaces and looks for `OK` in the first five characters."""
    del status  # Baofoo reads the text only
    return "OK" in body.decode("utf-8", errors="replace").lstrip(" ")[:5]


async def deliver(
    session: aiohttp.ClientSession,
    url: str,
    *,
    build: Callable[[], Request],
    acknowledges: Callable[[int, bytes], bool],
    schedule: Sequence[float],
    time_scale: float = 1.0,
    timeout_s: float = ATTEMPT_TIMEOUT_S,
    on_attempt: Callable[[Attempt], None] = lambda attempt: None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Delivery:
    """Send, then resend after each wait of `schedule` (times `time_scale`) until acknowledged.

    `build` is called for every attempt: GoPay signs each retry with a fresh nonce and timestamp.
    """
    attempts: list[Attempt] = []
    for number, wait_s in enumerate((0.0, *schedule), start=1):
        if wait_s:
            await sleep(wait_s * time_scale)
        attempt = await _attempt(
            session,
            url,
            build(),
            number=number,
            timeout_s=timeout_s,
            acknowledges=acknowledges,
        )
        attempts.append(attempt)
        on_attempt(attempt)
        if attempt.acknowledged:
            break
    return Delivery(tuple(attempts))


async def _attempt(
    session: aiohttp.ClientSession,
    url: str,
    request: Request,
    *,
    number: int,
    timeout_s: float,
    acknowledges: Callable[[int, bytes], bool],
) -> Attempt:
    body, headers = request
    try:
        reply = await post(session, url, data=body, headers=headers, timeout_s=timeout_s)
    except QueryFailed as exc:
        return Attempt(number=number, status=None, reply=exc.reason, acknowledged=False)
    return Attempt(
        number=number,
        status=reply.status,
        reply=reply.body[:_REPLY_SHOWN].decode("utf-8", errors="replace"),
        acknowledged=acknowledges(reply.status, reply.body),
    )
