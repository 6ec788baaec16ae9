"""The reconciler's pass rate over a backlog: orders queried a second by one pass.

    python -m bench.reconcile [--sizes 1000,10000,100000] [--provider baofoo] [--concurrency 8]

Not part of `python -m bench`. For each size: a fresh database with that many due pending
orders (inserted as a merchant's checkout inserts them, after an untimed pass over 200 others
has opened the connections and planned the statements), a stand-in gateway in its own process
that holds each as a pending payment and answers at once, and one `Reconciler.run_pass()` as
`receiver reconcile` runs it (the real query clients, over HTTP on loopback). Every order must be
queried exactly once and no reply stored (a still-pending reply is counted in `order_queries`).
The target: the largest backlog's rate within 20% of the smallest's. BENCH_DATABASE_URL names a
local server; else an embedded one is started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import secrets
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bench import pg
from receiver.config import (
    BaofooConfig,
    BaofooMerchant,
    Config,
    DatabaseConfig,
    GoPayConfig,
    GoPayMerchant,
    ReconcileConfig,
)
from receiver.core.notification import Status
from receiver.gateways.queriers import build_queriers
from receiver.simulate import GoPaySimulator
from receiver.simulate.gateway import GoPayClient, StandInGateway
from receiver.simulate.payments import Payment
from receiver.simulate.server import create_gateway_app
from receiver.sources.reconcile import Reconciler
from receiver.store import database
from receiver.store.ledger import Ledger

GOPAY_MCHID, BAOFOO_MEMBER, BAOFOO_TERMINAL = "100001", "100000178", "10000001"
API_KEY = "bench-api-key"
AGE = timedelta(seconds=400)  # every order past its first query point (300 s)
TARGET = 0.20

WARM_UP = 200  # orders of a first, untimed pass: connections opened, statements planned
INSERT_DUE = """
INSERT INTO orders (provider, merchant_id, out_trade_no, amount_minor, currency, channel,
                    created_at)
SELECT $1, $2, $6 || g, 10000, 'CNY', $4, now() - $5::interval
FROM generate_series(1, $3::int) AS g
"""


@dataclass(frozen=True, slots=True)
class Keys:
    """The test keys, as PEM text so that the stand-in's process can load them."""

    platform_pem: bytes
    merchant_pem: bytes
    md5_key: str


def _new_keys() -> Keys:
    def pem(key: rsa.RSAPrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    return Keys(
        pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        secrets.token_hex(16),
    )


def _stand_in_main(port: int, keys: Keys, provider: str, count: int) -> None:
    """The stand-in's process: hold `count` pending payments, answer queries until killed."""
    platform = serialization.load_pem_private_key(keys.platform_pem, None)
    merchant = serialization.load_pem_private_key(keys.merchant_pem, None)
    assert isinstance(platform, rsa.RSAPrivateKey) and isinstance(merchant, rsa.RSAPrivateKey)
    gateway = StandInGateway(
        platform=GoPaySimulator(platform),
        gopay_clients={GOPAY_MCHID: GoPayClient(merchant.public_key(), API_KEY)},
        baofoo_keys={(BAOFOO_MEMBER, BAOFOO_TERMINAL): keys.md5_key},
    )
    gopay = provider == "gopay"
    names = [f"BR{i}" for i in range(1, count + 1)] + [f"WU{i}" for i in range(1, WARM_UP + 1)]
    for name in names:
        gateway.hold(
            Payment(
                provider=provider,
                merchant_id=GOPAY_MCHID if gopay else BAOFOO_MEMBER,
                out_trade_no=name,
                amount_minor=10000,
                status=Status.PENDING,
                terminal_id="" if gopay else BAOFOO_TERMINAL,
            )
        )
    web.run_app(create_gateway_app(gateway), host="127.0.0.1", port=port, print=None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _wait_listening(port: int, *, within_s: float = 60.0) -> None:
    deadline = time.monotonic() + within_s
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise pg.BenchError("the stand-in gateway did not start") from None
            await asyncio.sleep(0.1)
        else:
            writer.close()
            return


def _config(url: str, *, keys: Keys, base_url: str, folder: Path, concurrency: int) -> Config:
    platform = folder / "platform.pem"
    private = serialization.load_pem_private_key(keys.platform_pem, None)
    platform.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    merchant = folder / "merchant.pem"
    merchant.write_bytes(keys.merchant_pem)
    return Config(
        database=DatabaseConfig(url=url, data_dir=folder / "unused", pool_min=1, pool_max=12),
        gopay=GoPayConfig(
            api_url=base_url,
            merchants=(
                GoPayMerchant(
                    mchid=GOPAY_MCHID,
                    platform_public_keys=(platform,),
                    private_key=merchant,
                    api_key=API_KEY,
                    default_channel="gopay_banktransfer",
                ),
            ),
        ),
        baofoo=BaofooConfig(
            query_url=f"{base_url}/order/query",
            merchants=(
                BaofooMerchant(
                    member_id=BAOFOO_MEMBER, terminal_id=BAOFOO_TERMINAL, md5_key=keys.md5_key
                ),
            ),
        ),
        # The pass rate of the store and the keyset, not of the pacer (max_per_second, 8 by
        # default, which a real gateway's limit calls for).
        reconcile=ReconcileConfig(concurrency=concurrency, max_per_second=1_000_000),
        source="bench",
    )


async def one_size(admin: str, *, size: int, provider: str, concurrency: int) -> dict[str, Any]:
    """One pass over `size` due orders in a fresh database: the figures."""
    keys = _new_keys()
    port = _free_port()
    spawn = multiprocessing.get_context("spawn")
    stand_in = spawn.Process(target=_stand_in_main, args=(port, keys, provider, size), daemon=True)
    stand_in.start()
    try:
        async with pg.throwaway_database(admin) as url:
            await _wait_listening(port)
            with tempfile.TemporaryDirectory() as folder:
                config = _config(
                    url,
                    keys=keys,
                    base_url=f"http://127.0.0.1:{port}",
                    folder=Path(folder),
                    concurrency=concurrency,
                )
                return await _measure(config, size=size, provider=provider)
    finally:
        stand_in.kill()
        stand_in.join()


async def _measure(config: Config, *, size: int, provider: str) -> dict[str, Any]:
    url = config.database.url
    conn = await asyncpg.connect(url)
    try:
        await database.migrate(conn)
        merchant = GOPAY_MCHID if provider == "gopay" else BAOFOO_MEMBER
        channel = "gopay_banktransfer" if provider == "gopay" else None
        await conn.execute(INSERT_DUE, provider, merchant, WARM_UP, channel, AGE, "WU")
        pool = await database.create_pool(url, min_size=1, max_size=12)
        try:
            async with aiohttp.ClientSession() as session:
                reconciler = Reconciler(
                    pool=pool,
                    ledger=Ledger(pool),
                    queriers=build_queriers(config),
                    session=session,
                    config=config.reconcile,
                )
                await reconciler.run_pass(provider)
                await conn.execute(INSERT_DUE, provider, merchant, size, channel, AGE, "BR")
                await conn.execute("VACUUM ANALYZE orders, order_queries")
                started = time.perf_counter()
                reports = await reconciler.run_pass(provider)
                elapsed = time.perf_counter() - started
        finally:
            await pool.close()
        stored = await conn.fetchval("SELECT count(*) FROM notifications")
        counted = await conn.fetchval(
            "SELECT sum(unstored) FROM order_queries q JOIN orders o ON o.id = q.order_id"
            " WHERE o.out_trade_no LIKE 'BR%'"
        )
    finally:
        await conn.close()
    # Warm-up orders come due again (their next schedule point) during a long pass, and are
    # rightly asked again: the rate counts every query, the check only the measured orders.
    measured = [r.order_id for r in reports if r.out_trade_no.startswith("BR")]
    if len(measured) != size or len(set(measured)) != size or stored != 0 or counted != size:
        what = f"{len(measured)} queries, {len(set(measured))} orders, {stored} stored"
        raise pg.BenchError(f"a pass over {size} orders went wrong: {what}, {counted} counted")
    return {
        "due": size,
        "queried": len(reports),
        "seconds": round(elapsed, 2),
        "per_second": round(len(reports) / elapsed, 1),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.reconcile", description=__doc__)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--provider", choices=("gopay", "baofoo"), default="baofoo")
    parser.add_argument("--concurrency", type=int, default=8)
    return parser.parse_args(argv)


async def bench(options: argparse.Namespace) -> list[dict[str, Any]]:
    sizes = [int(s) for s in options.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        async with pg.server(os.environ.get("BENCH_DATABASE_URL"), Path(workdir)) as (admin, kind):
            print(f"database: {kind}; provider {options.provider}", file=sys.stderr)
            for size in sizes:
                row = await one_size(
                    admin, size=size, provider=options.provider, concurrency=options.concurrency
                )
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the sizes, print one JSON line each and the spread; 1 when the target is missed."""
    options = parse_args(argv)
    try:
        rows = asyncio.run(bench(options))
    except (pg.BenchError, asyncpg.PostgresError, OSError) as exc:
        print(f"bench.reconcile: {exc}", file=sys.stderr)
        return 1
    rates = [r["per_second"] for r in rows]
    spread = (max(rates) - min(rates)) / max(rates)
    print(json.dumps({"spread": round(spread, 3), "target": TARGET, "met": spread <= TARGET}))
    return 0 if spread <= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
