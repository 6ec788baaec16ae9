"""`python -m bench --forward`: every event forwarded to a local endpoint answering at once.

The endpoint is a second bare aiohttp process (bench/bare.py, which answers any POST under
/notify/ at once). After the load, the phase waits until every event is delivered and reports
how fast forwarding went, and the service's CPU per notification including what forwarding
spent after the load (it may trail the notifications).
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from dataclasses import dataclass

import asyncpg

from bench import procs

DRAIN_TIMEOUT_S = 300.0

# How many events, when the first was written and when the last was delivered.
DELIVERY_SPAN = """
SELECT count(*) FILTER (WHERE d.state = 'delivered') AS delivered,
       count(*) FILTER (WHERE d.state <> 'delivered') AS undelivered,
       (SELECT count(*) FROM order_events) AS events,
       extract(epoch FROM max(d.delivered_at) - min(e.created_at))::float8 AS span_s,
       extract(epoch FROM max(e.created_at) - min(e.created_at))::float8 AS written_s
FROM deliveries d JOIN order_events e ON e.id = d.event_id
"""


def forward_table(url: str) -> str:
    """The service's `[[forward]]` table for the bench's endpoint."""
    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    return f'\n[[forward]]\nname = "bench"\nurl = "{url}"\nsecret = "{secret}"\n'


@dataclass(frozen=True, slots=True)
class Drained:
    """What forwarding did in a phase."""

    events: int
    delivered: int
    span_s: float  # first event written to last delivered
    written_s: float  # first event written to last written
    cpu_s: float  # the service's CPU from the phase's start until everything was delivered

    @property
    def rate(self) -> float:
        return self.delivered / self.span_s if self.span_s else 0.0

    def describe(self, sent: int) -> str:
        per = self.cpu_s / sent * 1e6 if sent else float("nan")
        return (
            f"forwarded {self.delivered} of {self.events} events: {self.rate:.0f} events/s"
            f" (events written over {self.written_s:.1f} s, all delivered {self.span_s:.1f} s"
            f" after the first); service CPU/notification with forwarding drained: {per:.0f} us"
        )


async def drain(conn: asyncpg.Connection, *, svc_pid: int, cpu0: float) -> Drained:
    """Wait until every event is delivered (or DRAIN_TIMEOUT_S), then sum up."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while True:
        row = await conn.fetchrow(DELIVERY_SPAN)
        done = row["undelivered"] == 0 and row["delivered"] >= row["events"]
        if done or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    return Drained(
        events=row["events"],
        delivered=row["delivered"],
        span_s=row["span_s"] or 0.0,
        written_s=row["written_s"] or 0.0,
        cpu_s=procs.cpu_seconds(svc_pid) - cpu0,
    )
