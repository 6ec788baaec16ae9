"""What a running `receiver serve` says about itself: the `starting` line, a database outage
logged once when it starts and once when it ends, and nothing on stdout or stderr but JSON."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from receiver.run import observe
from tests.support.gateways import charge
from tests.support.metrics import samples
from tests.support.pgproxy import PgProxy
from tests.support.service_process import ServiceProcess, free_port, write_config

pytestmark = pytest.mark.slow

READY_S = 40.0


@pytest.fixture
async def proxy(migrated: str) -> AsyncIterator[PgProxy]:
    proxy = PgProxy(migrated)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


def not_json(lines: list[str]) -> list[str]:
    bad = []
    for line in lines:
        try:
            if not isinstance(json.loads(line), dict):
                bad.append(line)
        except ValueError:
            bad.append(line)
    return bad


async def pay(svc: ServiceProcess, signer: Any, no: str) -> int:
    body, headers = signer.notify(charge(no))
    async with (
        aiohttp.ClientSession() as session,
        session.post(svc.base_url + "/notify/gopay", data=body, headers=headers) as r,
    ):
        return r.status


def database_up(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        [(_, up)] = samples(r.read().decode(), "receiver_database_up")
    return up


async def until(predicate: Any, within_s: float) -> None:
    async with asyncio.timeout(within_s):
        while True:
            if await predicate():
                return
            await asyncio.sleep(0.2)


async def test_an_outage_is_logged_once_each_way_and_every_line_is_json(
    proxy, db, signer, make_order, gopay_key_file: Path, tmp_path: Path
):
    for no in ("D1", "D2", "D3"):
        await make_order(no)
    metrics_port = free_port()
    config = write_config(
        tmp_path / "outage.toml", gopay_key_file=gopay_key_file, metrics={"port": metrics_port}
    )
    with ServiceProcess(config, env={"RECEIVER_DATABASE_URL": proxy.url}) as svc:
        svc.start()
        await asyncio.to_thread(svc.wait_ready, READY_S)
        assert await pay(svc, signer, "D1") == 200

        await proxy.cut()
        assert [await pay(svc, signer, "D2") for _ in range(5)] == [503] * 5
        assert await asyncio.to_thread(svc.get, "/readyz") == 503
        assert await asyncio.to_thread(database_up, metrics_port) == 0

        await proxy.restore()

        async def paid_again() -> bool:
            return await pay(svc, signer, "D3") == 200

        await until(paid_again, 30)
        assert await asyncio.to_thread(database_up, metrics_port) == 1
        assert await asyncio.to_thread(svc.stop) == 0

    events = [e["event"] for e in svc.logs()]
    assert events.count("database_unavailable") == 1, svc.output()
    assert events.count("database_recovered") == 1, svc.output()
    assert events.index("database_unavailable") < events.index("database_recovered")
    [down] = [e for e in svc.logs() if e["event"] == "database_unavailable"]
    assert down["level"] == "error" and down["reason"].startswith("database unavailable")
    assert not not_json(svc.stdout_lines()), svc.output()
    assert not not_json(svc.stderr_lines()), svc.output()
    assert not [line for line in svc.stdout_lines() if "Traceback" in line], svc.output()


async def test_with_workers_each_process_logs_an_outage_at_most_once_each_way(
    proxy, db, signer, make_order, gopay_key_file: Path, tmp_path: Path
):
    for no in ("W1", "W2"):
        await make_order(no)
    config = write_config(tmp_path / "workers.toml", gopay_key_file=gopay_key_file)
    with ServiceProcess(config, env={"RECEIVER_DATABASE_URL": proxy.url}, workers=2) as svc:
        svc.start()
        await asyncio.to_thread(svc.wait_ready, READY_S)
        await proxy.cut()
        assert {await pay(svc, signer, "W1") for _ in range(10)} == {503}
        await proxy.restore()
        for _ in range(10):  # each on a new connection: both workers get some
            await until(lambda: pay_is(svc, signer, "W2", {200}), 30)
        assert await asyncio.to_thread(svc.stop) == 0

    def per_pid(event: str) -> Counter[int]:
        return Counter(e["pid"] for e in svc.logs() if e["event"] == event)

    down, up = per_pid("database_unavailable"), per_pid("database_recovered")
    assert down and max(down.values()) == 1, svc.output()
    assert up and max(up.values()) == 1 and set(up) <= set(down), svc.output()
    assert not not_json(svc.stdout_lines() + svc.stderr_lines()), svc.output()


async def pay_is(svc: ServiceProcess, signer: Any, no: str, statuses: set[int]) -> bool:
    return await pay(svc, signer, no) in statuses


async def test_the_starting_line_names_version_database_merchants_and_migrations(
    migrated, gopay_key_file: Path, tmp_path: Path
):
    config = write_config(
        tmp_path / "start.toml",
        gopay_key_file=gopay_key_file,
        reconcile={"enabled": True},
        gopay={"api_url": "https://pay.example.com"},
    )
    with ServiceProcess(config, env={"RECEIVER_DATABASE_URL": migrated}) as svc:
        svc.start()
        await asyncio.to_thread(svc.wait_ready, READY_S)
    [starting] = [e for e in svc.logs() if e["event"] == "starting"]
    url = urlsplit(migrated)  # a TCP address, or an embedded server's socket directory
    assert starting["level"] == "info"
    assert starting["version"] == observe.version()
    assert starting["database"]["name"] == url.path.lstrip("/")
    host = url.hostname or parse_qs(url.query)["host"][0]
    assert starting["database"]["host"] == host
    assert starting["merchants"] == {"gopay": ["100001"], "baofoo": []}
    assert starting["migrations_applied"] == []  # the test database is migrated already
    assert starting["reconciler"] is True
    assert starting["metrics"] == "off"
    assert "postgres@" not in json.dumps(starting)
