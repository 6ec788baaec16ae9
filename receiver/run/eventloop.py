"""The event loop the service runs on: uvloop where it is installed, else asyncio's own.

uvloop (libuv underneath) costs less CPU per socket event; on a benchmark of this service it
took about a fifth off the CPU per notification. The code is the same on both loops: only
`asyncio` APIs are used, and the tests run on asyncio's loop as well as, through real `serve`
processes, on this one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on uvloop when it is installed."""
    try:
        import uvloop  # noqa: PLC0415 - optional: Windows has no uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def name() -> str:
    """The running loop's implementation, for the start-up log line."""
    return type(asyncio.get_running_loop()).__module__.split(".")[0]
