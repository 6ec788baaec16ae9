"""The asking side against real sockets: no redirect followed (the API key goes nowhere else),
GoPay's answers classified for operators, `reconcile.max_per_second`, the test key refused."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import structlog
from aiohttp import web
from prometheus_client import REGISTRY

from receiver.config import Config, ReconcileConfig, load_config
from receiver.errors import ConfigError
from receiver.gateways import QueryResult
from receiver.gateways.asking import redirect_reason
from receiver.gateways.queriers import build_queriers
from receiver.sources.pacing import SLOWEST_INTERVAL_S, Pacer
from receiver.sources.reconcile import Reconciler, Report
from receiver.store.database import create_pool
from receiver.store.ledger import Ledger
from tests.conftest import GOPAY_MCHID
from tests.support.cli import run
from tests.support.stand_in import API_KEY, merchant_key_file

SCHEDULE = ReconcileConfig(first_after_s=300, intervals_s=(300,), timeout_s=2, concurrency=4)


@pytest.fixture
async def pool(db, migrated) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(migrated, min_size=1, max_size=6)
    yield p
    await p.close()


class Recorder:
    """A gateway on a socket that answers every request the same way and keeps what it got."""

    def __init__(self, status: int = 200, body: bytes = b"{}", headers: Any = None) -> None:
        self.status, self.body, self.headers = status, body, headers or {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.times: list[float] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, dict(request.headers)))
        self.times.append(time.monotonic())
        return web.Response(
            status=self.status,
            body=self.body,
            headers=self.headers,
            content_type="application/json",
        )

    async def start(self, aiohttp_server: Any) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        server = await aiohttp_server(app)
        return str(server.make_url("")).rstrip("/")


def asking(config: Config, tmp_path: Path, api_url: str) -> Config:
    [merchant] = config.gopay.merchants
    merchant = replace(
        merchant,
        private_key=merchant_key_file(tmp_path),
        api_key=API_KEY,
        default_channel="gopay_banktransfer",
    )
    return replace(config, gopay=replace(config.gopay, merchants=(merchant,), api_url=api_url))


async def due(db: asyncpg.Connection, make_order: Any, *numbers: str) -> None:
    for number in numbers:
        row = await make_order(number)
        await db.execute(
            "UPDATE orders SET created_at = now() - $2::interval WHERE id = $1",
            row["id"],
            timedelta(seconds=301),
        )


async def one_pass(
    pool: asyncpg.Pool, live: Config, *, schedule: ReconcileConfig = SCHEDULE
) -> list[Report]:
    async with aiohttp.ClientSession() as session:
        reconciler = Reconciler(
            pool=pool,
            ledger=Ledger(pool),
            queriers=build_queriers(live),
            session=session,
            config=schedule,
        )
        return await reconciler.run_pass()


def counted(result: str) -> float:
    labels = {"provider": "gopay", "result": result}
    return REGISTRY.get_sample_value("receiver_reconcile_queries_total", labels) or 0.0


# --- redirects ---------------------------------------------------------------------------------


async def test_a_redirect_is_an_error_and_the_other_origin_receives_nothing(
    aiohttp_server, db, pool, make_order, config, tmp_path
):
    elsewhere = Recorder()
    target = await elsewhere.start(aiohttp_server)  # another port: another origin
    redirecting = Recorder(307, b"", {"Location": f"{target}/steal?token=abc"})
    api_url = await redirecting.start(aiohttp_server)
    await due(db, make_order, "RD1")
    [report] = await one_pass(pool, asking(config, tmp_path, api_url))
    assert report.result == "error" and report.outcome is None
    assert report.reason == "HTTP 307 redirect to 127.0.0.1 not followed"
    assert "token" not in report.reason
    assert [path for path, _ in redirecting.requests] == ["/pay/orderquery"]
    assert redirecting.requests[0][1]["x-ca-auth"] == API_KEY  # the configured origin got it
    assert elsewhere.requests == []  # and nobody else
    assert await db.fetchval("SELECT count(*) FROM notifications") == 0


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_every_redirect_status_is_refused(
    aiohttp_server, db, pool, make_order, config, tmp_path, status
):
    elsewhere = Recorder()
    target = await elsewhere.start(aiohttp_server)
    api_url = await Recorder(status, b"", {"Location": target}).start(aiohttp_server)
    await due(db, make_order, "RD2")
    [report] = await one_pass(pool, asking(config, tmp_path, api_url))
    assert report.reason == f"HTTP {status} redirect to 127.0.0.1 not followed"
    assert elsewhere.requests == []


def test_a_redirect_without_a_usable_location_says_so():
    assert redirect_reason(302, None) == "HTTP 302 redirect without a usable Location not followed"
    assert redirect_reason(302, "/relative") == (
        "HTTP 302 redirect without a usable Location not followed"
    )
    assert redirect_reason(302, "http://[bad") == (
        "HTTP 302 redirect without a usable Location not followed"
    )
    assert redirect_reason(301, "https://evil.example:8443/x") == (
        "HTTP 301 redirect to evil.example not followed"
    )


# --- GoPay's answers, classified ---------------------------------------------------------------

SEED_ERRORS = [
    (400, 400003, "Invalid Request.[Auth Key No permission or nexistencet.]", "misconfigured"),
    (403, 400003, "Invalid Request.[Request IP not authorized.]", "misconfigured"),
    (403, 400003, "Invalid Request.[Request Data And Sign Verify Failure.]", "misconfigured"),
    (400, 400006, "Route Payment Error. [No available channels]", "misconfigured"),
    (400, 400008, "Route Payment Error. [Payment account was misconfigured.]", "misconfigured"),
    (404, 600000, "User do not exist.", "misconfigured"),
    (403, 100003, "Invalid Request.[Trigger Restriction And Flow Control.]", "limited"),
    (400, 200000, "Order does not exist.", "not_found"),
    (500, 500000, "Server Error", "error"),
]


@pytest.mark.parametrize(("status", "code", "message", "result"), SEED_ERRORS)
async def test_each_gopay_error_class_is_labelled(
    aiohttp_server, db, pool, make_order, config, tmp_path, status, code, message, result
):
    body = f'{{"error_code":{code},"error_msg":"{message}"}}'.encode()
    api_url = await Recorder(status, body).start(aiohttp_server)
    await due(db, make_order, "E1")
    before = counted(result)
    [report] = await one_pass(pool, asking(config, tmp_path, api_url))
    assert report.result == result
    assert report.reason == f"gateway error_code {code}: {message}"
    assert counted(result) - before == 1
    assert await db.fetchval("SELECT last_result FROM order_queries") == result


async def test_a_misconfigured_answer_is_logged_once_per_merchant_per_pass(
    aiohttp_server, db, pool, make_order, config, tmp_path
):
    body = b'{"error_code":400003,"error_msg":"Invalid Request.[Request IP not authorized.]"}'
    api_url = await Recorder(403, body).start(aiohttp_server)
    await due(db, make_order, "MC1", "MC2", "MC3")
    live = asking(config, tmp_path, api_url)
    with structlog.testing.capture_logs() as logs:
        reports = await one_pass(pool, live)
    assert [r.result for r in reports] == ["misconfigured"] * 3
    told = [e for e in logs if e["event"] == "gateway_misconfigured"]
    assert [(e["provider"], e["merchant_id"], e["log_level"]) for e in told] == [
        ("gopay", GOPAY_MCHID, "error")
    ]
    assert "Request IP not authorized" in told[0]["reason"]
    assert API_KEY not in repr(logs)
    # The next pass says it again (once).
    await db.execute("UPDATE order_queries SET next_at = now() - interval '1 s'")
    with structlog.testing.capture_logs() as logs:
        await one_pass(pool, live)
    assert len([e for e in logs if e["event"] == "gateway_misconfigured"]) == 1


async def test_a_verified_answer_whose_money_does_not_match_is_counted_held(
    db, pool, make_order, gopay_key, aiohttp_server, config, tmp_path, baofoo_md5_key
):
    from receiver.simulate.payments import Payment  # noqa: PLC0415
    from tests.support.stand_in import start_stand_in  # noqa: PLC0415

    stand_in = await start_stand_in(aiohttp_server, platform_key=gopay_key, md5_key=baofoo_md5_key)
    await due(db, make_order, "H1")
    stand_in.gateway.hold(
        Payment(provider="gopay", merchant_id=GOPAY_MCHID, out_trade_no="H1", amount_minor=9000)
    )
    before = counted("held")
    [report] = await one_pass(pool, asking(config, tmp_path, stand_in.base_url))
    assert (report.result, report.outcome) == ("held", "amount_mismatch")
    assert counted("held") - before == 1
    assert await db.fetchval("SELECT reason FROM reviews") == "amount_mismatch"


# --- reconcile.max_per_second --------------------------------------------------------------------


async def test_a_pass_never_asks_faster_than_max_per_second(
    aiohttp_server, db, pool, make_order, config, tmp_path
):
    body = b'{"error_code":200000,"error_msg":"Order does not exist."}'
    gateway = Recorder(400, body)
    api_url = await gateway.start(aiohttp_server)
    await due(db, make_order, *(f"P{i}" for i in range(9)))
    schedule = replace(SCHEDULE, max_per_second=20.0, concurrency=8)
    await one_pass(pool, asking(config, tmp_path, api_url), schedule=schedule)
    assert len(gateway.times) == 9
    # 9 starts at most 20 a second: the first and the last at least 8 intervals of 50 ms apart.
    assert gateway.times[-1] - gateway.times[0] >= 8 * 0.05 - 0.01


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


async def test_the_pacer_spaces_starts_and_slows_down_when_limited():
    clock = FakeClock()
    pacer = Pacer(8, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        await pacer.wait()
    assert clock.slept == [0.125, 0.125]
    pacer.answered(QueryResult.LIMITED)
    assert pacer.interval_s == 0.25
    await pacer.wait()
    assert clock.slept[-1] == 0.125  # this start was booked at the old pace
    await pacer.wait()
    assert clock.slept[-1] == 0.25
    for _ in range(10):
        pacer.answered(QueryResult.LIMITED)
    assert pacer.interval_s == SLOWEST_INTERVAL_S
    pacer.answered(QueryResult.PAID)
    assert pacer.interval_s == SLOWEST_INTERVAL_S / 2
    for _ in range(10):
        pacer.answered(QueryResult.ERROR)
    assert pacer.interval_s == 0.125


async def test_an_idle_pacer_lets_the_next_query_start_at_once():
    clock = FakeClock()
    pacer = Pacer(2, clock=clock, sleep=clock.sleep)
    await pacer.wait()
    clock.now += 5
    await pacer.wait()
    assert clock.slept == []


# --- configuration -------------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "receiver.toml"
    path.write_text(text)
    return path


def test_baofoo_published_test_key_is_refused_inline(tmp_path):
    conf = write(
        tmp_path,
        '[[baofoo.merchants]]\nmember_id = "100000178"\nterminal_id = "10000001"\n'
        'md5_key = "abcdefg"\n',
    )
    with pytest.raises(ConfigError) as info:
        load_config(str(conf), environ={})
    text = str(info.value)
    assert "baofoo.merchants[0].md5_key" in text and "published test key" in text
    assert "abcdefg" not in text


def test_baofoo_published_test_key_is_refused_from_the_environment(tmp_path):
    conf = write(
        tmp_path,
        '[[baofoo.merchants]]\nmember_id = "1"\nterminal_id = "2"\nmd5_key_env = "BF_KEY"\n',
    )
    with pytest.raises(ConfigError) as info:
        load_config(str(conf), environ={"BF_KEY": "abcdefg"})
    text = str(info.value)
    assert "BF_KEY" in text and "published test key" in text and "abcdefg" not in text


def test_max_per_second_defaults_to_8_and_must_be_positive(tmp_path):
    assert load_config(str(write(tmp_path, "")), environ={}).reconcile.max_per_second == 8
    conf = write(tmp_path, "[reconcile]\nmax_per_second = 2.5\n")
    assert load_config(str(conf), environ={}).reconcile.max_per_second == 2.5
    with pytest.raises(ConfigError) as info:
        load_config(str(write(tmp_path, "[reconcile]\nmax_per_second = 0\n")), environ={})
    assert "reconcile.max_per_second" in str(info.value)


def test_check_config_refuses_the_test_key_with_exit_2(tmp_path):
    conf = write(
        tmp_path,
        '[[baofoo.merchants]]\nmember_id = "1"\nterminal_id = "2"\nmd5_key = "abcdefg"\n',
    )
    proc = run("check-config", "--config", str(conf), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "published test key" in proc.stderr and "Traceback" not in proc.stderr
