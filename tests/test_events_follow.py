"""`receiver events follow` as a real process: catch-up, live, resume, filters, and its ends."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.events_support import write_event
from tests.support.pgproxy import PgProxy
from tests.support.service_process import write_config

MakeOrder = Callable[..., Awaitable[asyncpg.Record]]


class Follow:
    """One `receiver events follow` process; its stdout read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def line(self, wait_s: float = 30.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), wait_s)
        assert raw, "follow ended"
        value: dict[str, Any] = json.loads(raw)
        return value

    async def nothing_for(self, seconds: float) -> None:
        with pytest.raises(TimeoutError):
            await self.line(seconds)

    async def stderr(self) -> str:
        assert self.proc.stderr is not None
        return (await self.proc.stderr.read()).decode()


@pytest.fixture
async def start_follow(migrated: str, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    procs: list[asyncio.subprocess.Process] = []

    async def start(
        *args: str, url: str = migrated, stdout: Any = asyncio.subprocess.PIPE
    ) -> Follow:
        config = write_config(tmp_path / "receiver.toml")
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_")}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "receiver.run.cli",
            "events",
            "follow",
            "--config",
            str(config),
            *args,
            stdout=stdout,
            stderr=asyncio.subprocess.PIPE,
            env=env | {"RECEIVER_DATABASE_URL": url},
        )
        procs.append(proc)
        return Follow(proc)

    yield start
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_follow_never_passes_over_a_held_transaction(
    db: asyncpg.Connection, migrated: str, make_order: MakeOrder, start_follow: Any
) -> None:
    held_order, later_order = await make_order("H1"), await make_order("H2")
    follow = await start_follow()
    writer = await asyncpg.connect(migrated)
    try:
        held = writer.transaction()
        await held.start()
        held_id = await write_event(writer, held_order["id"])
        later_id = await write_event(db, later_order["id"])
        await follow.nothing_for(2.0)
        await held.commit()
    finally:
        await writer.close()
    assert [(await follow.line())["id"], (await follow.line())["id"]] == [
        str(held_id),
        str(later_id),
    ]


async def test_follow_resumes_after_its_cursor_and_filters(
    db: asyncpg.Connection, make_order: MakeOrder, start_follow: Any
) -> None:
    gopay, baofoo = await make_order("G1"), await make_order("B1", provider="baofoo")
    first = await write_event(db, gopay["id"])
    second = await write_event(db, baofoo["id"], to_status="closed")
    everything = await start_follow("--once")
    lines = [await everything.line(), await everything.line()]
    assert await everything.proc.wait() == 0
    assert [line["id"] for line in lines] == [str(first), str(second)]
    assert lines[0]["cursor"] == lines[0]["data"]["cursor"]
    resumed = await start_follow("--once", "--after", lines[0]["cursor"])
    assert (await resumed.line())["id"] == str(second)
    assert await resumed.proc.wait() == 0
    baofoo_only = await start_follow("--once", "--provider", "baofoo")
    assert (await baofoo_only.line())["data"]["provider"] == "baofoo"
    assert await baofoo_only.proc.wait() == 0
    paid_only = await start_follow("--once", "--type", "order.paid")
    assert (await paid_only.line())["type"] == "order.paid"
    assert await paid_only.proc.wait() == 0


async def test_follow_goes_live_and_ends_cleanly_on_sigterm(
    db: asyncpg.Connection, make_order: MakeOrder, start_follow: Any
) -> None:
    order = await make_order("L1")
    follow = await start_follow()
    await follow.nothing_for(1.0)
    event_id = await write_event(db, order["id"])
    assert (await follow.line())["id"] == str(event_id)
    follow.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(follow.proc.wait(), 10) == 0
    assert await follow.stderr() == ""


async def test_follow_ends_cleanly_when_its_reader_goes_away(
    db: asyncpg.Connection, make_order: MakeOrder, start_follow: Any
) -> None:
    order = await make_order("P1")
    read_end, write_end = os.pipe()
    follow = await start_follow(stdout=write_end)
    os.close(write_end)
    await asyncio.sleep(1.5)  # caught up, listening
    os.close(read_end)  # the reader goes away (`| head -1` having read its line)
    await write_event(db, order["id"])
    assert await asyncio.wait_for(follow.proc.wait(), 30) == 0
    assert "Traceback" not in await follow.stderr()


async def test_follow_rides_out_a_database_outage(
    db: asyncpg.Connection, migrated: str, make_order: MakeOrder, start_follow: Any
) -> None:
    first, second = await make_order("O1"), await make_order("O2")
    proxy = PgProxy(migrated)
    await proxy.start()
    try:
        follow = await start_follow(url=proxy.url)
        first_id = await write_event(db, first["id"])
        assert (await follow.line())["id"] == str(first_id)
        await proxy.cut()
        second_id = await write_event(db, second["id"])  # while the follower cannot hear
        await asyncio.sleep(2.0)
        await proxy.restore()
        assert (await follow.line())["id"] == str(second_id)
    finally:
        await proxy.close()
