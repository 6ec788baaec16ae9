"""The stand-in downstream service (`receiver simulate downstream`): verifies what the
receiver forwards, and refuses on purpose when asked to."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import aiohttp
import asyncpg

from receiver.config import Config, ForwardDestination
from receiver.events.signing import secret_key, signed_headers
from receiver.simulate.downstream import StandInDownstream, new_secret, serving_downstream
from tests.events_support import write_event

MakeOrder = Callable[..., Awaitable[asyncpg.Record]]


async def test_the_stand_in_verifies_forwarded_events_and_refuses_on_purpose(
    db: asyncpg.Connection,
    config: Config,
    serve_app: Callable[[Config], Awaitable[Any]],
    make_order: MakeOrder,
) -> None:
    reports: list[dict[str, Any]] = []
    stand_in = StandInDownstream(secret=new_secret(), fail_first=1, on_report=reports.append)
    async with serving_downstream(stand_in, host="127.0.0.1", port=0) as url:
        dest = ForwardDestination(name="s", url=url, secret=stand_in.secret, retry_s=(0.2,))
        await serve_app(replace(config, forward=(dest,)))
        event_id = await write_event(db, (await make_order("D1"))["id"])
        deadline = time.monotonic() + 30
        while not stand_in.accepted:
            assert time.monotonic() < deadline, reports
            await asyncio.sleep(0.05)
        async with aiohttp.ClientSession() as http:
            forged = {"webhook-id": "1", "webhook-timestamp": str(int(time.time()))}
            forged["webhook-signature"] = "v1,AAAA"
            async with http.post(url, data=b"{}", headers=forged) as resp:
                assert resp.status == 401
    assert [(r["attempt"], r["answered"], r["verified"]) for r in reports[:2]] == [
        (1, 500, True),
        (2, 200, True),
    ]
    assert reports[0]["webhook_id"] == str(event_id)
    assert reports[1]["data"]["out_trade_no"] == "D1"
    assert reports[-1] == {"webhook_id": "1", "verified": False, "answered": 401}
    assert stand_in.refused == 1


async def test_simulate_downstream_prints_its_forward_table_and_each_request() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "receiver.run.cli", "simulate", "downstream", "--port", "0",
        "--fail-first", "1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        head = ""
        while "listening on" not in head:
            head += (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        table = tomllib.loads("\n".join(x for x in head.splitlines() if not x.startswith("#")))
        url, secret = table["forward"][0]["url"], table["forward"][0]["secret"]
        body = b'{"type": "order.paid", "id": "7", "data": {}}'
        headers = signed_headers(
            secret_key(secret), msg_id="7", timestamp=int(time.time()), body=body
        )
        async with aiohttp.ClientSession() as http:
            statuses = []
            for _ in range(2):
                async with http.post(url, data=body, headers=headers) as resp:
                    statuses.append(resp.status)
        assert statuses == [500, 200]
        lines = [json.loads(await proc.stdout.readline()) for _ in range(2)]
        assert [(x["attempt"], x["answered"], x["verified"]) for x in lines] == [
            (1, 500, True),
            (2, 200, True),
        ]
    finally:
        proc.terminate()
        await proc.wait()
