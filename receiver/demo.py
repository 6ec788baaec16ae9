"""`receiver demo`: the whole loop on one machine, with a readable summary.

An embedded PostgreSQL in a temporary directory, the service on a free local port, keys made
on the spot, and both gateways' notifications signed as the gateways sign them: a payment, a
duplicate delivery, a forgery and a wrong amount each.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from receiver.app import create_app
from receiver.appkeys import POOL
from receiver.config import (
    BaofooConfig,
    BaofooMerchant,
    Config,
    DatabaseConfig,
    GoPayConfig,
    GoPayMerchant,
    LogConfig,
)
from receiver.connections import Runner
from receiver.ledger import NewOrder, create_order
from receiver.logging import configure_logging
from receiver.simulate import BaofooSimulator, GoPaySimulator

GOPAY_MCHID = "100001"
BAOFOO_MEMBER, BAOFOO_TERMINAL = "100000178", "10000001"


@dataclass(frozen=True, slots=True)
class Step:
    gateway: str
    case: str
    order: str
    request: Callable[[], tuple[bytes, dict[str, str]]]


@dataclass(frozen=True, slots=True)
class Seen:
    step: Step
    status: int
    reply: str
    outcome: str


def run_demo(*, keep: bool = False) -> int:
    """Run the demo and print its summary; 0 when every step did what it should."""
    workdir = Path(tempfile.mkdtemp(prefix="receiver-demo-"))
    try:
        return asyncio.run(_demo(workdir))
    finally:
        if keep:
            print(f"\ndatabase kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


async def _demo(workdir: Path) -> int:
    gopay = GoPaySimulator.generate()
    key_file = workdir / "gopay-platform.pem"
    key_file.write_text(gopay.public_key_pem())
    baofoo = BaofooSimulator(md5_key=secrets.token_hex(16))
    config = _config(workdir, key_file, baofoo.md5_key)
    configure_logging(fmt="console", level="error")
    print(f"Starting an embedded PostgreSQL under {workdir} and the receiver ...")
    runner = Runner(create_app(config))
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        await _create_orders(runner.app)
        seen = await _run_steps(f"http://127.0.0.1:{port}", _steps(gopay, baofoo), runner.app)
        orders = await _final_orders(runner.app)
    finally:
        await runner.cleanup()
    _print_summary(seen, orders)
    return 0 if all(s.outcome == _EXPECTED[s.step.case] for s in seen) else 1


def _config(workdir: Path, key_file: Path, md5_key: str) -> Config:
    return Config(
        database=DatabaseConfig(url="", data_dir=workdir),
        log=LogConfig(format="console", level="error"),
        gopay=GoPayConfig(
            merchants=(GoPayMerchant(mchid=GOPAY_MCHID, platform_public_keys=(key_file,)),)
        ),
        baofoo=BaofooConfig(
            merchants=(
                BaofooMerchant(
                    member_id=BAOFOO_MEMBER, terminal_id=BAOFOO_TERMINAL, md5_key=md5_key
                ),
            )
        ),
        source="(demo)",
    )


_ORDERS = (
    NewOrder(provider="gopay", merchant_id=GOPAY_MCHID, out_trade_no="G-1001", amount_minor=10000),
    NewOrder(provider="gopay", merchant_id=GOPAY_MCHID, out_trade_no="G-1002", amount_minor=5000),
    NewOrder(provider="baofoo", merchant_id=BAOFOO_MEMBER, out_trade_no="B-2001", amount_minor=100),
    NewOrder(provider="baofoo", merchant_id=BAOFOO_MEMBER, out_trade_no="B-2002", amount_minor=200),
)

_EXPECTED = {
    "payment": "applied",
    "duplicate delivery": "duplicate",
    "forgery": "bad_signature",
    "wrong amount": "amount_mismatch",
}


async def _create_orders(app: web.Application) -> None:
    async with app[POOL].acquire() as conn:
        for order in _ORDERS:
            await create_order(conn, order)


def _steps(gopay: GoPaySimulator, baofoo: BaofooSimulator) -> list[Step]:
    forger = GoPaySimulator.generate()

    def g_paid(
        sim: GoPaySimulator, order: str, amount: str
    ) -> Callable[[], tuple[bytes, dict[str, str]]]:
        return lambda: sim.notify(_gopay_charge(order, amount))

    def b_paid(key: str, order: str, fen: str) -> Callable[[], tuple[bytes, dict[str, str]]]:
        sim = BaofooSimulator(md5_key=key)
        return lambda: sim.notify(
            member_id=BAOFOO_MEMBER, terminal_id=BAOFOO_TERMINAL, trans_id=order, fact_money=fen
        )

    return [
        Step("gopay", "payment", "G-1001", g_paid(gopay, "G-1001", "100.000")),
        Step("gopay", "duplicate delivery", "G-1001", g_paid(gopay, "G-1001", "100.000")),
        Step("gopay", "forgery", "G-1002", g_paid(forger, "G-1002", "50.000")),
        Step("gopay", "wrong amount", "G-1002", g_paid(gopay, "G-1002", "5.000")),
        Step("baofoo", "payment", "B-2001", b_paid(baofoo.md5_key, "B-2001", "100")),
        Step("baofoo", "duplicate delivery", "B-2001", b_paid(baofoo.md5_key, "B-2001", "100")),
        Step("baofoo", "forgery", "B-2002", b_paid("guessed-key", "B-2002", "200")),
        Step("baofoo", "wrong amount", "B-2002", b_paid(baofoo.md5_key, "B-2002", "2")),
    ]


def _gopay_charge(order: str, amount: str) -> dict[str, object]:
    return {
        "mid": int(GOPAY_MCHID),
        "out_trade_no": order,
        "in_trade_no": "GP" + order,
        "subject": "VIP充值",
        "channel": "gopay_bankupi",
        "amount": amount,
        "pay_amount": amount,
        "currency": "CNY",
        "status": 2,
    }


async def _run_steps(base: str, steps: Sequence[Step], app: web.Application) -> list[Seen]:
    seen = []
    async with aiohttp.ClientSession() as http:
        for step in steps:
            body, headers = step.request()
            async with http.post(f"{base}/notify/{step.gateway}", data=body, headers=headers) as r:
                reply = (await r.read()).decode()
                status = r.status
            async with app[POOL].acquire() as conn:
                outcome = await conn.fetchval(
                    "SELECT outcome FROM notifications ORDER BY id DESC LIMIT 1"
                )
            seen.append(Seen(step, status, reply, outcome))
    return seen


async def _final_orders(app: web.Application) -> list[tuple[str, ...]]:
    async with app[POOL].acquire() as conn:
        rows = await conn.fetch(
            "SELECT provider, out_trade_no, amount_minor, status, paid_amount_minor,"
            " (SELECT count(*) FROM order_events e WHERE e.order_id = o.id) AS events"
            " FROM orders o ORDER BY id"
        )
    return [
        (
            r["provider"],
            r["out_trade_no"],
            _money(r["amount_minor"]),
            r["status"],
            _money(r["paid_amount_minor"]),
            str(r["events"]),
        )
        for r in rows
    ]


def _money(minor: int | None) -> str:
    return "-" if minor is None else f"{minor // 100}.{minor % 100:02d}"


def _print_summary(seen: Sequence[Seen], orders: Sequence[tuple[str, ...]]) -> None:
    print("\nNotifications sent, and what the receiver answered:\n")
    _table(
        ("gateway", "case", "order", "HTTP", "reply", "outcome"),
        [
            (s.step.gateway, s.step.case, s.step.order, str(s.status), s.reply, s.outcome)
            for s in seen
        ],
    )
    print("\nOrders afterwards:\n")
    _table(("gateway", "order", "amount", "status", "paid", "events"), orders)
    print(
        "\nEach payment moved its order once; the duplicate was acknowledged without a second"
        "\nevent; the forgery and the wrong amount were refused, so the gateway would retry or"
        "\nan operator would look, and the orders they named stayed pending."
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    for i, row in enumerate([header, *rows]):
        print(
            ("  " + "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True))).rstrip()
        )
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))
