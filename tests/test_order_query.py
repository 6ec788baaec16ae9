"""Order queries against the stand-in gateway on a real socket: every answer a query can get."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from receiver.config import BaofooConfig, BaofooMerchant, Config, GoPayConfig, GoPayMerchant
from receiver.core.notification import Outcome, Status
from receiver.gateways import OrderQuerier, OrderRef, QueryAnswer, QueryResult
from receiver.gateways.queriers import build_queriers
from receiver.simulate.gateway import Fault, GoPayClient, StandInGateway
from receiver.simulate.payments import Payment
from receiver.simulate.server import create_gateway_app
from receiver.sources import reconcile
from receiver.store.database import create_pool
from receiver.store.ledger import Ledger
from tests.conftest import BAOFOO_MEMBER, BAOFOO_TERMINAL, GOPAY_MCHID
from tests.support.gopay_signer import GoPaySigner, new_rsa_key
from tests.support.tls_support import self_signed

API_KEY = "test-api-key"
ServerFactory = Callable[..., Any]


@dataclass
class Rig:
    """The stand-in gateway on a socket and the receiver's queriers pointed at it."""

    gateway: StandInGateway
    queriers: dict[str, OrderQuerier]
    session: aiohttp.ClientSession

    async def ask(self, order: OrderRef, *, timeout_s: float = 5.0) -> QueryAnswer:
        return await self.queriers[order.provider].query(self.session, order, timeout_s=timeout_s)


@pytest.fixture(scope="module")
def merchant_key() -> RSAPrivateKey:
    return new_rsa_key()


@pytest.fixture
def merchant_key_file(merchant_key: RSAPrivateKey, tmp_path: Path) -> Path:
    path = tmp_path / "merchant.pem"
    pem = merchant_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.write_bytes(pem)
    return path


def query_config(
    base_url: str, *, platform_key_file: Path, merchant_key_file: Path, md5_key: str
) -> Config:
    """A receiver configuration whose query URLs point at `base_url`."""
    merchant = GoPayMerchant(
        mchid=GOPAY_MCHID,
        platform_public_keys=(platform_key_file,),
        private_key=merchant_key_file,
        api_key=API_KEY,
        default_channel="gopay_banktransfer",
    )
    return Config(
        gopay=GoPayConfig(merchants=(merchant,), api_url=base_url),
        baofoo=BaofooConfig(
            merchants=(BaofooMerchant(BAOFOO_MEMBER, BAOFOO_TERMINAL, md5_key),),
            query_url=f"{base_url}/order/query",
        ),
        source="tests",
    )


@pytest.fixture
async def rig(
    aiohttp_server: ServerFactory,
    gopay_key: RSAPrivateKey,
    gopay_key_file: Path,
    merchant_key: RSAPrivateKey,
    merchant_key_file: Path,
    baofoo_md5_key: str,
) -> AsyncIterator[Rig]:
    gateway = StandInGateway(
        platform=GoPaySigner(gopay_key),
        gopay_clients={GOPAY_MCHID: GoPayClient(merchant_key.public_key(), API_KEY)},
        baofoo_keys={(BAOFOO_MEMBER, BAOFOO_TERMINAL): baofoo_md5_key},
    )
    server: TestServer = await aiohttp_server(create_gateway_app(gateway))
    base_url = str(server.make_url("")).rstrip("/")
    config = query_config(
        base_url,
        platform_key_file=gopay_key_file,
        merchant_key_file=merchant_key_file,
        md5_key=baofoo_md5_key,
    )
    async with aiohttp.ClientSession() as session:
        yield Rig(gateway=gateway, queriers=build_queriers(config), session=session)


def order_ref(provider: str, out_trade_no: str, *, amount_minor: int = 10000) -> OrderRef:
    gopay = provider == "gopay"
    return OrderRef(
        order_id=1,
        provider=provider,
        merchant_id=GOPAY_MCHID if gopay else BAOFOO_MEMBER,
        out_trade_no=out_trade_no,
        amount_minor=amount_minor,
        currency="CNY",
        channel="gopay_bankupi" if gopay else None,
    )


def held(gateway: StandInGateway, order: OrderRef, **fields: Any) -> Payment:
    payment = Payment(
        provider=order.provider,
        merchant_id=order.merchant_id,
        out_trade_no=order.out_trade_no,
        amount_minor=order.amount_minor,
        terminal_id=BAOFOO_TERMINAL if order.provider == "baofoo" else "",
        **fields,
    )
    gateway.hold(payment)
    return payment


PROVIDERS = ["gopay", "baofoo"]


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_paid_order_is_answered_paid_with_a_verified_notification(
    rig: Rig, provider: str
) -> None:
    order = order_ref(provider, f"{provider}-paid")
    payment = held(rig.gateway, order, status=Status.PAID)
    answer = await rig.ask(order)
    assert answer.result is QueryResult.PAID, answer.reason
    n = answer.notification
    assert n is not None and n.target is Status.PAID
    assert (n.provider, n.merchant_id, n.out_trade_no) == (
        provider,
        order.merchant_id,
        order.out_trade_no,
    )
    assert n.paid_amount_minor == 10000 and n.currency == "CNY"
    assert n.nonce is None
    assert answer.inbound is not None and answer.inbound.provider == provider
    if provider == "gopay":
        assert n.provider_trade_no == payment.trade_no
        assert set(answer.inbound.headers) == {"x-ca-noncestr", "x-ca-timestamp", "x-ca-signature"}
    else:
        assert n.paid_at is not None


@pytest.mark.parametrize(
    ("provider", "status", "result"),
    [
        ("gopay", Status.FAILED, QueryResult.FAILED),
        ("gopay", Status.CLOSED, QueryResult.CLOSED),
        ("gopay", Status.PENDING, QueryResult.PENDING),
        ("baofoo", Status.FAILED, QueryResult.FAILED),
        ("baofoo", Status.PENDING, QueryResult.PENDING),
    ],
)
async def test_failed_closed_and_pending_payments_are_answered_as_such(
    rig: Rig, provider: str, status: Status, result: QueryResult
) -> None:
    order = order_ref(provider, f"{provider}-{status}")
    held(rig.gateway, order, status=status)
    answer = await rig.ask(order)
    assert answer.result is result, answer.reason
    assert answer.notification is not None
    expected_target = None if status is Status.PENDING else status
    assert answer.notification.target is expected_target


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_an_order_the_gateway_does_not_hold_is_not_found(rig: Rig, provider: str) -> None:
    answer = await rig.ask(order_ref(provider, "never-paid"))
    assert answer.result is QueryResult.NOT_FOUND, answer.reason
    assert answer.notification is None and answer.rejected is None


async def test_an_order_without_channel_is_queried_with_the_default_channel(rig: Rig) -> None:
    order = replace(order_ref("gopay", "no-channel"), channel=None)
    held(rig.gateway, order)
    assert (await rig.ask(order)).result is QueryResult.PAID


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_wrong_amount_is_carried_in_the_answer_for_the_ledger_to_refuse(
    rig: Rig, provider: str
) -> None:
    order = order_ref(provider, f"{provider}-short", amount_minor=10000)
    held(rig.gateway, replace(order, amount_minor=9000), status=Status.PAID)
    answer = await rig.ask(order)
    assert answer.result is QueryResult.PAID
    assert answer.notification is not None and answer.notification.paid_amount_minor == 9000


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_forged_reply_is_refused_with_the_reply_kept(rig: Rig, provider: str) -> None:
    order = order_ref(provider, f"{provider}-forged")
    held(rig.gateway, order)
    rig.gateway.fault = Fault.FORGED
    answer = await rig.ask(order)
    assert answer.result is QueryResult.REFUSED
    assert answer.rejected is not None and answer.rejected.outcome is Outcome.BAD_SIGNATURE
    assert answer.rejected.out_trade_no == order.out_trade_no
    assert answer.inbound is not None and order.out_trade_no.encode() in answer.inbound.body
    assert answer.notification is None


async def test_a_reply_signed_by_another_platform_key_is_refused(rig: Rig) -> None:
    rig.gateway.platform = GoPaySigner(new_rsa_key())
    order = order_ref("gopay", "other-platform")
    held(rig.gateway, order)
    answer = await rig.ask(order)
    assert answer.result is QueryResult.REFUSED
    assert answer.rejected is not None and answer.rejected.outcome is Outcome.BAD_SIGNATURE


async def test_a_query_signed_with_the_wrong_merchant_key_gets_the_gateways_error_code(
    rig: Rig,
) -> None:
    rig.gateway.gopay_clients[GOPAY_MCHID] = GoPayClient(new_rsa_key().public_key(), API_KEY)
    answer = await rig.ask(order_ref("gopay", "whatever"))
    assert answer.result is QueryResult.MISCONFIGURED
    assert "400003" in answer.reason and "Sign Verify Failure" in answer.reason


async def test_a_wrong_api_key_gets_the_gateways_error_code(rig: Rig) -> None:
    client = rig.gateway.gopay_clients[GOPAY_MCHID]
    rig.gateway.gopay_clients[GOPAY_MCHID] = GoPayClient(client.public_key, "another")
    answer = await rig.ask(order_ref("gopay", "whatever"))
    assert answer.result is QueryResult.MISCONFIGURED and "Auth Key" in answer.reason


async def test_a_baofoo_query_with_the_wrong_md5_key_is_refused_by_the_gateway(rig: Rig) -> None:
    rig.gateway.baofoo_keys[(BAOFOO_MEMBER, BAOFOO_TERMINAL)] = "another key"
    order = order_ref("baofoo", "wrong-key")
    held(rig.gateway, order)
    answer = await rig.ask(order)
    assert answer.result is QueryResult.ERROR and "not MemberID" in answer.reason


@pytest.mark.parametrize(
    ("provider", "fault", "reason"),
    [
        ("gopay", Fault.ERROR, "error_code 999999"),
        ("baofoo", Fault.ERROR, "HTTP 500"),
        ("gopay", Fault.GARBAGE, "not a JSON object"),
        ("baofoo", Fault.GARBAGE, "not MemberID"),
        ("gopay", Fault.OVERSIZED, "larger than 65536 bytes"),
        ("baofoo", Fault.OVERSIZED, "larger than 65536 bytes"),
    ],
)
async def test_error_codes_garbage_and_oversized_replies_are_errors(
    rig: Rig, provider: str, fault: Fault, reason: str
) -> None:
    order = order_ref(provider, f"{provider}-{fault}")
    held(rig.gateway, order)
    rig.gateway.fault = fault
    answer = await rig.ask(order)
    assert answer.result is QueryResult.ERROR
    assert reason in answer.reason
    assert answer.notification is None and answer.inbound is None


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_hanging_gateway_is_an_error_after_the_timeout(rig: Rig, provider: str) -> None:
    rig.gateway.fault = Fault.HANG
    started = time.monotonic()
    answer = await rig.ask(order_ref(provider, "hang"), timeout_s=0.3)
    assert answer.result is QueryResult.ERROR
    assert answer.reason == "no reply within 0.3s"
    assert time.monotonic() - started < 2


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_gateway_that_is_down_is_an_error(
    provider: str,
    gopay_key_file: Path,
    merchant_key_file: Path,
    baofoo_md5_key: str,
) -> None:
    config = query_config(
        f"http://127.0.0.1:{_closed_port()}",
        platform_key_file=gopay_key_file,
        merchant_key_file=merchant_key_file,
        md5_key=baofoo_md5_key,
    )
    queriers = build_queriers(config)
    async with aiohttp.ClientSession() as session:
        answer = await queriers[provider].query(session, order_ref(provider, "down"), timeout_s=5)
    assert answer.result is QueryResult.ERROR
    assert "ClientConnectorError" in answer.reason


def test_queriers_are_built_only_for_gateways_whose_url_is_set(
    gopay_key_file: Path, merchant_key_file: Path
) -> None:
    config = query_config(
        "http://gw",
        platform_key_file=gopay_key_file,
        merchant_key_file=merchant_key_file,
        md5_key="k",
    )
    assert set(build_queriers(config)) == {"gopay", "baofoo"}
    no_gopay = replace(config, gopay=replace(config.gopay, api_url=""))
    assert set(build_queriers(no_gopay)) == {"baofoo"}
    neither = replace(no_gopay, baofoo=replace(config.baofoo, query_url=""))
    assert build_queriers(neither) == {}


# --- through the ledger: an answer is applied like a notification --------------------------------


@pytest.fixture
async def ledger(db: asyncpg.Connection, migrated: str) -> AsyncIterator[Ledger]:
    pool = await create_pool(migrated, min_size=1, max_size=2)
    try:
        yield Ledger(pool)
    finally:
        await pool.close()


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_the_ledger_applies_a_paid_answer_and_refuses_a_wrong_amount(
    rig: Rig, ledger: Ledger, make_order: Callable[..., Any], db: asyncpg.Connection, provider: str
) -> None:
    paid = reconcile.order_ref(
        await make_order(f"{provider}-ok", provider=provider, channel="gopay_bankupi")
    )
    short = reconcile.order_ref(
        await make_order(f"{provider}-short", provider=provider, channel="gopay_bankupi")
    )
    held(rig.gateway, paid)
    held(rig.gateway, replace(short, amount_minor=short.amount_minor - 1))
    outcomes = []
    for order in (paid, short):
        answer = await rig.ask(order)
        assert answer.inbound is not None and answer.notification is not None
        outcomes.append((await ledger.apply(answer.inbound, answer.notification)).outcome)
    assert outcomes == [Outcome.APPLIED, Outcome.AMOUNT_MISMATCH]
    statuses = await db.fetch("SELECT out_trade_no, status FROM orders ORDER BY id")
    assert [(r["out_trade_no"], r["status"]) for r in statuses] == [
        (f"{provider}-ok", "paid"),
        (f"{provider}-short", "pending"),
    ]


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_gateway_whose_certificate_does_not_verify_is_a_tls_error(
    aiohttp_server: ServerFactory,
    rig: Rig,
    tmp_path: Path,
    gopay_key_file: Path,
    merchant_key_file: Path,
    baofoo_md5_key: str,
    provider: str,
) -> None:
    cert, key = self_signed(tmp_path / "tls")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server: TestServer = await aiohttp_server(create_gateway_app(rig.gateway), ssl=context)
    config = query_config(
        f"https://127.0.0.1:{server.port}",
        platform_key_file=gopay_key_file,
        merchant_key_file=merchant_key_file,
        md5_key=baofoo_md5_key,
    )
    order = order_ref(provider, "tls")
    held(rig.gateway, order)
    answer = await build_queriers(config)[provider].query(rig.session, order, timeout_s=5)
    assert answer.result is QueryResult.ERROR
    assert answer.reason.startswith("TLS error:") and "certificate" in answer.reason
