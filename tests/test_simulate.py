"""The stand-in gateway: notifications on the retry schedules, lost notifications, its command."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from receiver.config import parse_config
from receiver.core.notification import Status
from receiver.gateways import OrderRef, QueryResult
from receiver.gateways.gopay import SignatureHeaders, read_charge, verify_signature
from receiver.gateways.gopay.notify import FAIL_BODY, SUCCESS_BODY
from receiver.gateways.queriers import build_queriers
from receiver.run.cli import main
from receiver.simulate.gateway import GoPayClient, StandInGateway
from receiver.simulate.payments import Payment
from receiver.simulate.sender import (
    BAOFOO_RETRY_S,
    GOPAY_RETRY_S,
    baofoo_acknowledges,
    deliver,
    gopay_acknowledges,
)
from receiver.simulate.server import PAYMENTS_PATH, create_gateway_app
from tests.conftest import BAOFOO_MEMBER, BAOFOO_TERMINAL, GOPAY_MCHID
from tests.support.gopay_signer import GoPaySigner, new_rsa_key

ServerFactory = Callable[..., Any]
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class StubReceiver:
    """A receiver that refuses the first `failures` deliveries, then acknowledges."""

    failures: int
    success: bytes = SUCCESS_BODY
    seen: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((await request.read(), dict(request.headers)))
        if len(self.seen) <= self.failures:
            return web.Response(status=401, body=FAIL_BODY)
        return web.Response(body=self.success)


async def stub_url(aiohttp_server: ServerFactory, stub: StubReceiver) -> str:
    app = web.Application()
    app.router.add_post("/notify", stub.handle)
    server: TestServer = await aiohttp_server(app)
    return str(server.make_url("/notify"))


class Sleeps:
    """Records the waits asked for; sleeps them for real only when `real`."""

    def __init__(self, *, real: bool) -> None:
        self.asked: list[float] = []
        self.real = real

    async def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)
        if self.real:
            await asyncio.sleep(seconds)


def gopay_payment(out_trade_no: str, **fields: Any) -> Payment:
    return Payment(
        provider="gopay",
        merchant_id=GOPAY_MCHID,
        out_trade_no=out_trade_no,
        amount_minor=10000,
        **fields,
    )


@pytest.fixture
def gateway(gopay_key: RSAPrivateKey, baofoo_md5_key: str) -> StandInGateway:
    return StandInGateway(
        platform=GoPaySigner(gopay_key),
        gopay_clients={GOPAY_MCHID: GoPayClient(new_rsa_key().public_key(), "k")},
        baofoo_keys={(BAOFOO_MEMBER, BAOFOO_TERMINAL): baofoo_md5_key},
    )


# --- the retry schedule -------------------------------------------------------------------------


async def test_gopay_resends_on_its_schedule_scaled_until_success_then_stops(
    aiohttp_server: ServerFactory, gateway: StandInGateway, gopay_key: RSAPrivateKey
) -> None:
    stub = StubReceiver(failures=3)
    url = await stub_url(aiohttp_server, stub)
    sleeps = Sleeps(real=True)
    async with aiohttp.ClientSession() as session:
        delivery = await deliver(
            session,
            url,
            build=gateway.notification(gopay_payment("retried")),
            acknowledges=gopay_acknowledges,
            schedule=GOPAY_RETRY_S,
            time_scale=0.001,
            sleep=sleeps,
        )
    assert delivery.acknowledged
    assert [(a.number, a.status, a.acknowledged) for a in delivery.attempts] == [
        (1, 401, False),
        (2, 401, False),
        (3, 401, False),
        (4, 200, True),
    ]
    assert sleeps.asked == pytest.approx([0.015, 0.015, 0.030])
    await asyncio.sleep(0.3)  # the next wait (0.18 s) has passed: nothing more arrives
    assert len(stub.seen) == 4
    # Each retry is signed afresh, and each signature verifies.
    nonces = {headers["X-Ca-Noncestr"] for _, headers in stub.seen}
    assert len(nonces) == 4
    for body, headers in stub.seen:
        charge, _ = read_charge(body)
        signed = SignatureHeaders.from_mapping(headers)
        assert verify_signature([gopay_key.public_key()], headers=signed, charge=charge) == "base64"


@pytest.mark.parametrize(
    ("provider", "schedule"), [("gopay", GOPAY_RETRY_S), ("baofoo", BAOFOO_RETRY_S)]
)
async def test_a_receiver_that_never_acknowledges_gets_the_whole_schedule(
    aiohttp_server: ServerFactory,
    gateway: StandInGateway,
    provider: str,
    schedule: tuple[float, ...],
) -> None:
    stub = StubReceiver(failures=1000)
    url = await stub_url(aiohttp_server, stub)
    sleeps = Sleeps(real=False)
    payment = Payment(
        provider=provider,
        merchant_id=GOPAY_MCHID if provider == "gopay" else BAOFOO_MEMBER,
        out_trade_no="never",
        amount_minor=100,
        terminal_id=BAOFOO_TERMINAL,
    )
    async with aiohttp.ClientSession() as session:
        delivery = await deliver(
            session,
            url,
            build=gateway.notification(payment),
            acknowledges=gopay_acknowledges if provider == "gopay" else baofoo_acknowledges,
            schedule=schedule,
            time_scale=0.5,
            sleep=sleeps,
        )
    assert not delivery.acknowledged
    assert len(delivery.attempts) == len(stub.seen) == len(schedule) + 1
    assert sleeps.asked == [s * 0.5 for s in schedule]


def test_gopay_schedule_is_the_documented_three_hours() -> None:
    assert GOPAY_RETRY_S == (15, 15, 30, 180, 1800, 1800, 1800, 1800, 3600)
    assert sum(GOPAY_RETRY_S) == 3 * 3600 + 4 * 60


@pytest.mark.parametrize(
    ("body", "acknowledged"),
    [(b"OK", True), (b"   OK", True), (b"xxxOK", True), (b"FAIL", False), (b"xxxxOK", False)],
)
def test_baofoo_acknowledgement_is_ok_in_the_first_five_characters(
    body: bytes, acknowledged: bool
) -> None:
    assert baofoo_acknowledges(200, body) is acknowledged


def test_gopay_acknowledgement_is_exactly_success_with_200() -> None:
    assert gopay_acknowledges(200, SUCCESS_BODY)
    assert not gopay_acknowledges(503, SUCCESS_BODY)
    assert not gopay_acknowledges(200, SUCCESS_BODY + b" ")


# --- against the real receiver --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "path"), [("gopay", "/notify/gopay"), ("baofoo", "/notify/baofoo")]
)
async def test_the_receiver_acknowledges_the_stand_ins_notification_at_once(
    client: TestClient[Any, Any],
    gateway: StandInGateway,
    make_order: Callable[..., Any],
    db: asyncpg.Connection,
    provider: str,
    path: str,
) -> None:
    order = await make_order(f"{provider}-sim", provider=provider)
    payment = Payment(
        provider=provider,
        merchant_id=order["merchant_id"],
        out_trade_no=order["out_trade_no"],
        amount_minor=order["amount_minor"],
        terminal_id=BAOFOO_TERMINAL,
    )
    async with aiohttp.ClientSession() as session:
        delivery = await gateway.send(
            session, payment, notify_url=str(client.make_url(path)), time_scale=0.001
        )
    assert delivery.acknowledged and len(delivery.attempts) == 1
    status = await db.fetchval("SELECT status FROM orders WHERE id = $1", order["id"])
    assert status == "paid"


# --- the control API: a lost notification is held for queries -----------------------------------


@pytest.fixture
async def control(
    aiohttp_server: ServerFactory, gateway: StandInGateway
) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    server: TestServer = await aiohttp_server(create_gateway_app(gateway))
    async with aiohttp.ClientSession() as session:
        yield session, str(server.make_url(PAYMENTS_PATH))


async def test_a_lost_notification_is_never_sent_but_the_payment_is_held(
    aiohttp_server: ServerFactory,
    gateway: StandInGateway,
    control: tuple[aiohttp.ClientSession, str],
) -> None:
    session, url = control
    stub = StubReceiver(failures=0)
    notify_url = await stub_url(aiohttp_server, stub)
    body = {
        "provider": "gopay",
        "merchant": GOPAY_MCHID,
        "out_trade_no": "lost-1",
        "amount": "12.34",
        "notify_url": notify_url,
        "lose": True,
        "time_scale": 0.001,
    }
    async with session.post(url, json=body) as resp:
        assert resp.status == 201
        reply = await resp.json()
    assert reply["notification"] == "lost"
    await asyncio.sleep(0.2)
    assert stub.seen == []
    held = gateway.payments[("gopay", GOPAY_MCHID, "lost-1")]
    assert (held.amount_minor, held.status) == (1234, Status.PAID)


async def test_a_payment_handed_over_the_control_api_is_notified_in_the_background(
    aiohttp_server: ServerFactory, control: tuple[aiohttp.ClientSession, str]
) -> None:
    session, url = control
    stub = StubReceiver(failures=1)
    body = {
        "provider": "baofoo",
        "merchant": BAOFOO_MEMBER,
        "out_trade_no": "sent-1",
        "amount": "1.00",
        "notify_url": await stub_url(aiohttp_server, stub),
        "time_scale": 0.001,
    }
    async with session.post(url, json=body) as resp:
        assert resp.status == 201 and (await resp.json())["notification"] == "sending"
    for _ in range(100):
        if len(stub.seen) >= 2:
            break
        await asyncio.sleep(0.02)
    assert len(stub.seen) == 2  # refused once, resent after Baofoo's first wait (30 s * 0.001)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"provider": "paypal"}, "provider must be gopay or baofoo"),
        ({"amount": "1.001"}, "amount: not a whole number of minor units"),
        ({"merchant": "999"}, "GoPay merchant 999 is not configured"),
        ({"status": "refunded"}, "status must be"),
        ({"time_scale": 0}, "time_scale must be"),
    ],
)
async def test_the_control_api_refuses_bad_payments_with_a_reason(
    control: tuple[aiohttp.ClientSession, str], change: dict[str, Any], error: str
) -> None:
    session, url = control
    body = {"provider": "gopay", "merchant": GOPAY_MCHID, "out_trade_no": "x", "amount": "1"}
    async with session.post(url, json=body | change) as resp:
        assert resp.status == 400
        assert error in (await resp.json())["error"]


# --- the command -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--provider", "paypal", "--amount", "1"], "invalid choice: 'paypal'"),
        (["--provider", "gopay", "--amount", "1.001"], "--amount '1.001'"),
        (["--provider", "gopay", "--amount", "0"], "--amount must be greater than zero"),
        (["--provider", "gopay", "--amount", "1", "--time-scale", "0"], "--time-scale"),
    ],
)
def test_simulate_pay_refuses_bad_input_with_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["simulate", "pay", "--merchant", "1", "--out-trade-no", "n", *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and message in err and err.startswith("receiver: usage:")


def test_simulate_serve_refuses_a_key_file_that_is_not_a_private_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "gopay-platform-private.pem").write_text("-----BEGIN NOTHING-----\nAAAA\n")
    code = main(["simulate", "serve", "--port", "0", "--keys-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "gopay-platform-private.pem" in err
    assert "AAAA" not in err


def test_simulate_pay_to_a_gateway_that_is_not_running_fails_with_exit_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--provider", "gopay", "--merchant", "1", "--out-trade-no", "n", "--amount", "1"]
    code = main(["simulate", "pay", "--gateway", "http://127.0.0.1:9", *argv])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "cannot reach the stand-in gateway" in err


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A real `receiver simulate serve` process: its base URL and the config it printed."""
    keys = str(tmp_path / "keys")
    argv = [sys.executable, "-m", "receiver.run.cli", "simulate", "serve", "--port", "0"]
    with subprocess.Popen(
        [*argv, "--keys-dir", keys],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        try:
            printed: list[str] = []
            for line in proc.stdout:
                if line.startswith("# listening on "):
                    break
                printed.append(line)
            else:
                pytest.fail(f"simulate serve did not start: {proc.stderr.read()}")
            yield line.split()[3].rstrip(";"), "".join(printed)
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def test_a_lost_payment_handed_to_simulate_serve_is_found_by_the_printed_configuration(
    serving: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base_url, snippet = serving
    argv = ["--provider", "gopay", "--merchant", GOPAY_MCHID, "--out-trade-no", "cli-lost"]
    code = main(["simulate", "pay", "--gateway", base_url, *argv, "--amount", "5.00", "--lose"])
    assert code == 0 and '"out_trade_no": "cli-lost"' in capsys.readouterr().out
    config = parse_config(tomllib.loads(snippet), source="snippet", base=tmp_path, environ={})
    order = OrderRef(
        order_id=1,
        provider="gopay",
        merchant_id=GOPAY_MCHID,
        out_trade_no="cli-lost",
        amount_minor=500,
        currency="CNY",
        channel=None,  # the printed default_channel is used
    )

    async def ask() -> QueryResult:
        async with aiohttp.ClientSession() as session:
            querier = build_queriers(config)["gopay"]
            return (await querier.query(session, order, timeout_s=5)).result

    assert asyncio.run(ask()) is QueryResult.PAID
