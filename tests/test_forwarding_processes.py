"""Forwarding across real `receiver serve` processes: each event delivered once by two of
them, and nothing lost when one is killed mid-delivery."""

from __future__ import annotations

import asyncio
import collections
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from tests.events_support import write_event
from tests.support.downstream import Downstream, Received, new_secret
from tests.support.service_process import ServiceProcess, _toml_value, write_config

MakeOrder = Callable[..., Awaitable[asyncpg.Record]]


def forwarding_config(path: Path, key_file: Path, downstream: Downstream, **dest: Any) -> Path:
    write_config(path, gopay_key_file=key_file, reconcile={"enabled": False})
    keys = {"name": "shop", "url": downstream.url, "secret": new_secret()} | dest
    block = "\n[[forward]]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in keys.items())
    path.write_text(path.read_text() + block)
    return path


@pytest.fixture
async def downstream() -> AsyncIterator[Downstream]:
    server = await Downstream().start()
    yield server
    await server.close()


@pytest.fixture
def services(
    db: asyncpg.Connection,
    migrated: str,
    tmp_path: Path,
    gopay_key_file: Path,
    downstream: Downstream,
) -> Callable[..., ServiceProcess]:
    """`services(**destination)`: a `receiver serve` forwarding to `downstream`, not started."""

    def service(**dest: Any) -> ServiceProcess:
        config = forwarding_config(tmp_path / "r.toml", gopay_key_file, downstream, **dest)
        return ServiceProcess(config, env={"RECEIVER_DATABASE_URL": migrated})

    return service


async def started(svc: ServiceProcess) -> ServiceProcess:
    svc.start()
    await asyncio.to_thread(svc.wait_ready, 60)
    return svc


async def delivered(db: asyncpg.Connection, count: int, wait_s: float = 60.0) -> None:
    deadline = time.monotonic() + wait_s
    query = "SELECT count(*) FROM deliveries WHERE state = 'delivered'"
    while await db.fetchval(query) < count:
        assert time.monotonic() < deadline, f"not {count} delivered within {wait_s} s"
        await asyncio.sleep(0.1)


async def test_two_serve_processes_deliver_each_event_once(
    db: asyncpg.Connection, services: Any, make_order: MakeOrder, downstream: Downstream
) -> None:
    async def slowish(_received: Received) -> web.StreamResponse:
        await asyncio.sleep(0.05)  # attempts overlap between the processes
        return web.Response(text="ok")

    downstream.answer = slowish
    with services() as one, services() as two:
        await started(one)
        await started(two)
        orders = [await make_order(f"T{i}") for i in range(40)]
        events = [await write_event(db, o["id"]) for o in orders]
        await delivered(db, len(events))
        await asyncio.sleep(1.0)  # time for a second delivery, were there one
    counts = collections.Counter(downstream.ids())
    assert sorted(counts) == sorted(map(str, events))
    assert set(counts.values()) == {1}
    attempts = await db.fetch("SELECT DISTINCT attempts FROM deliveries")
    assert [r["attempts"] for r in attempts] == [1]


async def test_a_process_killed_mid_delivery_loses_nothing(
    db: asyncpg.Connection, services: Any, make_order: MakeOrder, downstream: Downstream
) -> None:
    release = asyncio.Event()

    async def hold_the_first(_received: Received) -> web.StreamResponse:
        if len(downstream.received) == 1:
            await release.wait()
        return web.Response(text="ok")

    downstream.answer = hold_the_first
    order = await make_order("K1")
    with services(timeout_s=2) as first:
        await started(first)
        event_id = await write_event(db, order["id"])
        await downstream.wait_for(1)
        first.signal(signal.SIGKILL)
        await asyncio.to_thread(first.wait, 10)
    release.set()
    with services(timeout_s=2) as second:
        await started(second)
        await delivered(db, 1, wait_s=30)
    assert downstream.ids() == [str(event_id), str(event_id)]
    row = await db.fetchrow("SELECT attempts, state FROM deliveries")
    assert (row["attempts"], row["state"]) == (2, "delivered")
