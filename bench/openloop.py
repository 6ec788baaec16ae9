"""Open-loop load: requests go out on a fixed schedule, whether or not replies have come back.

wrk is closed-loop: a connection sends its next request only after the reply to the previous
one, so a stall of the server also stalls the sending, and the requests that would have arrived
meanwhile are never measured ("coordinated omission"). Here request k is due at
`start + k / rate`; it goes out on an idle keep-alive connection, a new one if none is idle (up
to `--max-connections`), or, failing that, as soon as one frees up. Its latency runs from the
time it was due, not from when it was written, so a stall shows in full. Times come from
time.monotonic(): uvloop's loop.time() has a resolution of 1 ms.

Run as `python -m bench.openloop URL PREFIX --rate R --seconds S --files T`; prints one line
`BENCH_JSON {...}` with the same fields as bench/wrk.lua, plus the lateness of the sends (how
far behind schedule the generator itself wrote) and the worst latency of each second.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from bench.workload import read_requests

DRAIN_TIMEOUT_S = 10.0
_HEAD_END = b"\r\n\r\n"


@dataclass(slots=True)
class Tally:
    """What the phase saw: counts, and latencies from each request's due time."""

    sent: int = 0
    replies: int = 0
    errors: int = 0
    connections: int = 0
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    latencies: list[float] = field(default_factory=list)  # seconds, due -> reply read
    lateness: list[float] = field(default_factory=list)  # seconds, due -> written
    worst_by_second: dict[int, float] = field(default_factory=dict)


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: one request at a time, replies parsed by length."""

    def __init__(self, on_idle: Callable[[Connection], None], on_reply: OnReply) -> None:
        self.transport: asyncio.Transport | None = None
        self.on_idle = on_idle
        self.on_reply = on_reply
        self.buffer = bytearray()
        self.due = 0.0  # when the request in flight was due; 0 when idle

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self.on_idle(self)

    def send(self, request: bytes, due: float) -> None:
        assert self.transport is not None
        self.due = due
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(_HEAD_END)
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        start = head.find(b"content-length:")
        length = int(head[start + 15 : head.find(b"\r\n", start)]) if start >= 0 else 0
        if len(self.buffer) < end + 4 + length:
            return
        status = head[9:12].decode()
        del self.buffer[: end + 4 + length]
        due, self.due = self.due, 0.0
        self.on_reply(due, status)
        self.on_idle(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.due:
            self.on_reply(self.due, "lost")


OnReply = Callable[[float, str], None]


class OpenLoop:
    """Sends `requests` at `rate` per second for `seconds` over a growing connection pool."""

    def __init__(
        self, host: str, port: int, requests: list[bytes], *, rate: float, max_connections: int
    ) -> None:
        self.host, self.port = host, port
        self.requests = requests
        self.rate = rate
        self.max_connections = max_connections
        self.idle: list[Connection] = []
        self.backlog: collections.deque[tuple[bytes, float]] = collections.deque()
        self.opening = 0
        self.tally = Tally()
        self.start = 0.0
        self.all_answered = asyncio.Event()
        self.sending_done = False
        self.cursor = 0
        self.wrapped = 0
        self.openers: set[asyncio.Task[None]] = set()

    async def run(self, seconds: float, initial_connections: int) -> float:
        """The whole phase; returns its duration (first due time to last reply)."""
        await asyncio.gather(*(self._open() for _ in range(initial_connections)))
        self.start = time.monotonic() + 0.05
        total = math.floor(seconds * self.rate)
        for k in range(total):
            due = self.start + k / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self._dispatch(self._next_request(), due)
        self.sending_done = True
        self._check_done()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.all_answered.wait(), DRAIN_TIMEOUT_S)
        return time.monotonic() - self.start

    def _next_request(self) -> bytes:
        if self.cursor >= len(self.requests):
            self.cursor, self.wrapped = 0, self.wrapped + 1
        self.cursor += 1
        return self.requests[self.cursor - 1]

    def _dispatch(self, request: bytes, due: float) -> None:
        while self.idle and self.idle[-1].transport is None:  # closed by the server while idle
            self.idle.pop()
        if self.idle:
            self._send(self.idle.pop(), request, due)
            return
        self.backlog.append((request, due))
        if self.tally.connections + self.opening < self.max_connections:
            task = asyncio.ensure_future(self._open())
            self.openers.add(task)
            task.add_done_callback(self.openers.discard)

    def _send(self, conn: Connection, request: bytes, due: float) -> None:
        now = time.monotonic()
        self.tally.sent += 1
        self.tally.lateness.append(now - due)
        conn.send(request, due)

    async def _open(self) -> None:
        self.opening += 1
        try:
            await asyncio.get_running_loop().create_connection(
                lambda: Connection(self._on_idle, self._on_reply), self.host, self.port
            )
            self.tally.connections += 1
        except OSError:
            self.tally.errors += 1
        finally:
            self.opening -= 1

    def _on_idle(self, conn: Connection) -> None:
        if self.backlog:
            self._send(conn, *self.backlog.popleft())
        else:
            self.idle.append(conn)
        self._check_done()

    def _on_reply(self, due: float, status: str) -> None:
        now = time.monotonic()
        self.tally.replies += 1
        self.tally.statuses[status] += 1
        latency = now - due
        self.tally.latencies.append(latency)
        second = int(due - self.start)
        worst = self.tally.worst_by_second
        worst[second] = max(worst.get(second, 0.0), latency)

    def _check_done(self) -> None:
        if self.sending_done and not self.backlog and self.tally.replies >= self.tally.sent:
            self.all_answered.set()


def percentiles_us(values: list[float]) -> dict[str, float]:
    """p50, p90, p99, p99.9, max and mean of latencies in seconds, as microseconds."""
    ordered = sorted(values) or [0.0]

    def at(p: float) -> float:
        rank = math.ceil(round(p / 100 * len(ordered), 6))  # nearest rank, float noise aside
        return ordered[min(len(ordered) - 1, max(rank, 1) - 1)] * 1e6

    return {
        "p50": at(50),
        "p90": at(90),
        "p99": at(99),
        "p999": at(99.9),
        "max": ordered[-1] * 1e6,
        "mean": sum(ordered) / len(ordered) * 1e6,
    }


def in_schedule_order(prefix: str, files: int) -> list[bytes]:
    """The requests of all the per-thread files, back in the order they were dealt."""
    per_file = read_requests(Path(prefix), files)
    merged = []
    for i in range(max(len(f) for f in per_file)):
        merged += [f[i] for f in per_file if i < len(f)]
    return merged


def report(gen: OpenLoop, duration_s: float) -> dict[str, object]:
    """The BENCH_JSON document (wrk.lua's fields and more)."""
    t = gen.tally
    return {
        "requests": t.replies,
        "duration_us": round(duration_s * 1e6),
        "sent": t.sent,
        "replies": t.replies,
        "wrapped": gen.wrapped,
        "statuses": dict(t.statuses),
        "errors": {"connect": t.errors},
        "latency_us": percentiles_us(t.latencies),
        "lateness_us": percentiles_us(t.lateness),
        "rate": gen.rate,
        "connections": t.connections,
        "worst_ms_by_second": [
            round(t.worst_by_second.get(s, 0.0) * 1e3, 1)
            for s in range(max(t.worst_by_second, default=-1) + 1)
        ],
    }


def main() -> None:
    """Parse arguments, run one open-loop phase, print BENCH_JSON."""
    # The schedule is the outside world's: it must not slip because the server under test keeps
    # the cores busy. A higher priority (root only) keeps the generator on time; it uses little.
    with contextlib.suppress(OSError):
        os.nice(-10)
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("url")
    p.add_argument("prefix")
    p.add_argument("--rate", type=float, required=True, help="requests per second")
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--files", type=int, required=True, help="request files PREFIX.0 .. N-1")
    p.add_argument("--connections", type=int, default=32, help="connections opened up front")
    p.add_argument("--max-connections", type=int, default=512)
    a = p.parse_args()
    parts = urlsplit(a.url)
    gen = OpenLoop(
        parts.hostname or "127.0.0.1",
        parts.port or 80,
        in_schedule_order(a.prefix, a.files),
        rate=a.rate,
        max_connections=a.max_connections,
    )
    duration = run_on_best_loop(gen.run(a.seconds, a.connections))
    print("BENCH_JSON " + json.dumps(report(gen, duration)), flush=True)


def run_on_best_loop(coro: object) -> float:
    """uvloop when installed (the generator should cost little), else asyncio's own loop."""
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]
    return uvloop.run(coro)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
