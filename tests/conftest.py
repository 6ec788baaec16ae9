"""Fixtures: a real PostgreSQL (TEST_DATABASE_URL or an embedded server), real keys, real HTTP."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from receiver.config import (
    BaofooConfig,
    BaofooMerchant,
    Config,
    DatabaseConfig,
    GoPayConfig,
    GoPayMerchant,
)
from receiver.http.app import create_app
from receiver.http.connections import Runner
from receiver.store import database
from receiver.store.orders import NewOrder, create_order
from tests.support.gopay_signer import GoPaySigner, new_rsa_key, public_key_text
from tests.support.pgproxy import PgProxy
from tests.support.service_process import ServiceProcess, write_config

GOPAY_MCHID = "100001"
BAOFOO_MEMBER = "100000178"
BAOFOO_TERMINAL = "10000001"

TABLES = "deliveries, forward_cursors, reviews, order_events, notifications, orders, gopay_nonces"


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """TEST_DATABASE_URL when set, else an embedded server for this test session."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield url
        return
    # Not under pytest's tmp_path: a second pytest run resets that tree to mode 0700, and the
    # embedded server runs as its own user when the tests run as root.
    data_dir = Path(tempfile.mkdtemp(prefix="receiver-tests-pg-"))
    server = database.EmbeddedPostgres(data_dir, cleanup_mode="delete")
    try:
        yield asyncio.run(server.start())
    finally:
        asyncio.run(server.stop())
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
async def migrated(database_url: str) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        await database.migrate(conn)
    finally:
        await conn.close()
    return database_url


@pytest.fixture
async def db(migrated: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to a database whose tables were emptied for this test."""
    conn = await asyncpg.connect(migrated)
    await conn.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def gopay_key() -> RSAPrivateKey:
    return new_rsa_key()


@pytest.fixture(scope="session")
def gopay_key_file(gopay_key: RSAPrivateKey, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "gopay-platform.pem"
    path.write_text(public_key_text(gopay_key, "spki_pem"))
    return path


@pytest.fixture
def signer(gopay_key: RSAPrivateKey) -> GoPaySigner:
    return GoPaySigner(gopay_key)


@pytest.fixture(scope="session")
def baofoo_md5_key() -> str:
    return secrets.token_hex(16)


@pytest.fixture
def config(migrated: str, gopay_key_file: Path, baofoo_md5_key: str, tmp_path: Path) -> Config:
    """A configuration with one merchant per gateway, on the test database."""
    return Config(
        database=DatabaseConfig(
            url=migrated, data_dir=tmp_path / "unused", pool_min=1, pool_max=10
        ),
        gopay=GoPayConfig(
            merchants=(GoPayMerchant(mchid=GOPAY_MCHID, platform_public_keys=(gopay_key_file,)),),
        ),
        baofoo=BaofooConfig(
            merchants=(
                BaofooMerchant(
                    member_id=BAOFOO_MEMBER, terminal_id=BAOFOO_TERMINAL, md5_key=baofoo_md5_key
                ),
            )
        ),
        source="tests",
    )


ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


class ReceiverTestServer(TestServer):
    """aiohttp's test server on the receiver's own runner: its connection handling, header
    deadline, connection limit and parser refusals, as `receiver serve` runs them."""

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        return Runner(self.app, **kwargs)


@pytest.fixture
def serve_app(aiohttp_client: ClientFactory) -> Callable[[Config], Awaitable[TestClient[Any, Any]]]:
    """Serve `create_app(config)` as `receiver serve` does, on a free port; a client for it."""

    async def serve(config: Config) -> TestClient[Any, Any]:
        return await aiohttp_client(ReceiverTestServer(create_app(config)))

    return serve


@pytest.fixture
async def client(
    db: asyncpg.Connection, config: Config, serve_app: Callable[..., Any]
) -> TestClient[Any, Any]:
    """The receiver over real HTTP on an emptied database."""
    return await serve_app(config)


@pytest.fixture
async def proxied(
    db: asyncpg.Connection, config: Config, serve_app: Callable[..., Any]
) -> AsyncIterator[tuple[TestClient[Any, Any], PgProxy]]:
    """The receiver reaching its database through a proxy the test can cut and restore."""
    proxy = PgProxy(config.database.url)
    await proxy.start()
    try:
        yield (
            await serve_app(replace(config, database=replace(config.database, url=proxy.url))),
            proxy,
        )
    finally:
        await proxy.close()


@pytest.fixture
def make_order(db: asyncpg.Connection) -> Callable[..., Awaitable[asyncpg.Record]]:
    """Create a pending order the way a merchant's checkout would."""

    async def make(
        out_trade_no: str,
        *,
        provider: str = "gopay",
        merchant_id: str | None = None,
        amount_minor: int = 10000,
        currency: str = "CNY",
        channel: str | None = None,
    ) -> asyncpg.Record:
        default_merchant = GOPAY_MCHID if provider == "gopay" else BAOFOO_MEMBER
        order = NewOrder(
            provider=provider,
            merchant_id=merchant_id or default_merchant,
            out_trade_no=out_trade_no,
            amount_minor=amount_minor,
            currency=currency,
            channel=channel,
        )
        return await create_order(db, order)

    return make


SERVICE_READY_S = 40.0


@pytest.fixture
def start_service(
    migrated: str, gopay_key_file: Path, tmp_path: Path
) -> Iterator[Callable[..., ServiceProcess]]:
    """Start `receiver serve` on the test database with a TOML config; stopped afterwards."""
    started: list[ServiceProcess] = []

    def start(
        *, workers: int = 1, env: dict[str, str] | None = None, **tables: Any
    ) -> ServiceProcess:
        tables.setdefault("server", {})
        config = write_config(
            tmp_path / f"receiver-{len(started)}.toml", gopay_key_file=gopay_key_file, **tables
        )
        svc = ServiceProcess(
            config, env={"RECEIVER_DATABASE_URL": migrated} | (env or {}), workers=workers
        )
        started.append(svc.start())
        svc.wait_ready(SERVICE_READY_S)
        return svc

    yield start
    for svc in started:
        svc.stop()
