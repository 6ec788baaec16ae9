"""bench/openloop.py: requests leave on schedule, and latency counts from the scheduled time."""

from __future__ import annotations

import asyncio
import os
import time

from aiohttp import web

from bench.openloop import OpenLoop, percentiles_us
from bench.procs import pss_mb, rss_mb

REQUEST = b"POST /notify/gopay HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"


async def serve(handler) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_post("/notify/gopay", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


async def test_a_stall_counts_from_the_scheduled_time_and_more_connections_open():
    first_arrival: list[float] = []

    async def handler(request: web.Request) -> web.Response:
        # The server answers nothing until 300 ms after the first request reached it (counted
        # from then, not from the test's start, however long start-up takes on a busy machine).
        await request.read()
        if not first_arrival:
            first_arrival.append(time.monotonic())
        await asyncio.sleep(max(0.0, first_arrival[0] + 0.3 - time.monotonic()))
        return web.Response(text="ok")

    runner, port = await serve(handler)
    try:
        gen = OpenLoop("127.0.0.1", port, [REQUEST] * 10, rate=200, max_connections=64)
        await gen.run(1.0, initial_connections=4)
    finally:
        await runner.cleanup()
    t = gen.tally
    assert (t.sent, t.replies, dict(t.statuses)) == (200, 200, {"200": 200})
    assert gen.wrapped == 19  # 10 requests reused 20 times
    assert t.connections > 4  # the sender did not wait for replies: it opened more
    # The first request was due at least 0.3 s before the server answered anything.
    assert max(t.latencies) >= 0.3
    assert percentiles_us(t.latencies)["p50"] < 0.2e6  # after the stall, replies are quick


def test_percentiles_pick_the_nearest_rank():
    values = [i / 1000 for i in range(1, 1001)]  # 1 .. 1000 ms
    p = percentiles_us(values)
    assert (p["p50"], p["p99"], p["p999"], p["max"]) == (500e3, 990e3, 999e3, 1000e3)


def test_memory_of_a_process_tree_is_read_from_proc():
    assert 0 < pss_mb(os.getpid()) <= rss_mb(os.getpid())
