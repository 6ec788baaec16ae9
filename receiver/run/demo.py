"""`receiver demo`: the whole loop on one machine, with a readable summary.

An embedded PostgreSQL in a temporary directory, the service on a free local port, the stand-in
gateway (`receiver simulate`) on another, keys made on the spot, and both gateways'
notifications signed as the gateways sign them: a payment, a duplicate delivery, a forgery and a
wrong amount each. Then a lost notification each: paid at the stand-in, never notified, and
recovered by the service's own background reconciler through an order query.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO

import aiohttp
import asyncpg
from aiohttp import web

from receiver.config import (
    BaofooConfig,
    BaofooMerchant,
    Config,
    DatabaseConfig,
    ForwardDestination,
    GoPayConfig,
    GoPayMerchant,
    LogConfig,
    ReconcileConfig,
)
from receiver.http.app import create_app
from receiver.http.appkeys import POOL
from receiver.http.connections import Runner
from receiver.logging import configure_logging
from receiver.simulate import BaofooSimulator, GoPaySimulator
from receiver.simulate.downstream import StandInDownstream, new_secret, serving_downstream
from receiver.simulate.gateway import GoPayClient, StandInGateway
from receiver.simulate.keys import (
    MERCHANT_PRIVATE,
    PLATFORM_PUBLIC,
    SimulatorKeys,
    config_snippet,
    load_or_create,
)
from receiver.simulate.payments import GOPAY_DEFAULT_CHANNEL, Payment
from receiver.simulate.server import BAOFOO_QUERY_PATH, serving
from receiver.store.database import LIBRARY_LOG
from receiver.store.ledger import NOTIFY, QUERY
from receiver.store.orders import NewOrder, create_order

GOPAY_MCHID = "100001"
BAOFOO_MEMBER, BAOFOO_TERMINAL = "100000178", "10000001"
LOST = "lost notification"
# Orders are asked about one second after creation (and every second while pending), so the
# service's background reconciler recovers a lost notification while the demo watches.
DEMO_RECONCILE = ReconcileConfig(first_after_s=1, intervals_s=(1,), timeout_s=5.0)
RECOVERY_TIMEOUT_S = 10.0  # lost notifications not recovered by then: the demo fails
RECOVERY_POLL_S = 0.2

# The newest row of a source: what the receiver made of the notification just sent.
LAST_NOTIFICATION = """
SELECT outcome, source FROM notifications WHERE source = $1 ORDER BY id DESC LIMIT 1
"""

# The first order-query reply stored for an order, and how long after the order's creation.
FIRST_QUERY_REPLY = """
SELECT n.outcome, n.source, extract(epoch FROM n.received_at - o.created_at) AS after_s
FROM notifications n
JOIN orders o USING (provider, merchant_id, out_trade_no)
WHERE n.provider = $1 AND n.merchant_id = $2 AND n.out_trade_no = $3 AND n.source = $4
ORDER BY n.id
LIMIT 1
"""

FINAL_ORDERS = """
SELECT provider, out_trade_no, amount_minor, status, paid_amount_minor,
       (SELECT count(*) FROM order_events e WHERE e.order_id = o.id) AS events
FROM orders o
ORDER BY id
"""


@dataclass(frozen=True, slots=True)
class Step:
    gateway: str
    case: str
    order: str
    request: Callable[[], tuple[bytes, dict[str, str]]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Seen:
    """One line of the summary: what came to the receiver and what it made of it."""

    gateway: str
    case: str
    order: str
    status: str  # the receiver's HTTP status, "-" when nothing was sent to it
    reply: str
    source: str
    outcome: str

    @property
    def as_expected(self) -> bool:
        """True when the receiver did what it should with this case."""
        expected_source = QUERY if self.case == LOST else NOTIFY
        return self.outcome == _EXPECTED[self.case] and self.source == expected_source


def run_demo(*, keep: bool = False) -> int:
    """Run the demo and print its summary; 0 when every step did what it should.

    With `keep`, the folder stays: the demo's configuration (receiver.toml, its embedded database
    and keys), the service's log (receiver.log, JSON lines) and the embedded PostgreSQL's logs,
    and the summary ends with the commands that look inside.
    """
    workdir = Path(tempfile.mkdtemp(prefix="receiver-demo-"))
    try:
        with contextlib.ExitStack() as stack:
            log = stack.enter_context((workdir / LOG_FILE).open("w")) if keep else None
            code = asyncio.run(_demo(workdir, log=log))
        if keep:
            _print_kept(workdir)
        return code
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


CONFIG_FILE = "receiver.toml"
LOG_FILE = "receiver.log"


async def _demo(workdir: Path, *, log: TextIO | None = None) -> int:
    keys = load_or_create(workdir / "keys")
    gopay = GoPaySimulator(keys.platform)
    stand_in = _stand_in(keys, gopay)
    if log is None:
        configure_logging(fmt="console", level="error")
    else:
        configure_logging(fmt="json", level="info", stream=log)
    print(f"Starting an embedded PostgreSQL under {workdir}, the receiver, a stand-in gateway ...")
    downstream = StandInDownstream(secret=new_secret(), fail_first=1)
    async with (
        serving(stand_in) as gateway_url,
        serving_downstream(downstream, host="127.0.0.1", port=0) as hook_url,
    ):
        if log is not None:
            _write_config(workdir, keys, gateway_url)
        config = _config(workdir, keys, gateway_url)
        config = replace(config, forward=(_destination(hook_url, downstream.secret),))
        runner = Runner(create_app(config))
        await runner.setup()
        try:
            seen, orders = await _run(runner, _steps(gopay, keys.md5_key), stand_in)
            forwarded = await _forwarded(downstream)
        finally:
            await runner.cleanup()
    wrong = problems(seen, orders) + _forwarding_problems(downstream, forwarded)
    _print_summary(seen, orders, wrong, forwarded)
    return 1 if wrong else 0


def _write_config(workdir: Path, keys: SimulatorKeys, gateway_url: str) -> None:
    """The demo's configuration as a file, for the commands run on what the demo left."""
    snippet = config_snippet(
        keys,
        base_url=gateway_url,
        gopay_merchants=[GOPAY_MCHID],
        baofoo_merchants=[(BAOFOO_MEMBER, BAOFOO_TERMINAL)],
    )
    head = (
        "# receiver demo's configuration: its embedded database (here) and its merchants' keys.\n"
        "# The stand-in gateway it names ran only while the demo did.\n"
        '[database]\ndata_dir = "."\n\n[metrics]\nport = 0\n\n'
    )
    (workdir / CONFIG_FILE).write_text(head + snippet, encoding="utf-8")


def _print_kept(workdir: Path) -> None:
    config = workdir / CONFIG_FILE
    order = f"--provider gopay --merchant {GOPAY_MCHID} --out-trade-no G-1001"
    print(
        f"\nKept in {workdir}:"
        f"\n  {CONFIG_FILE:<22} the demo's configuration (its embedded database and keys)"
        f"\n  {LOG_FILE:<22} the service's log, one JSON line per event"
        f"\n  {LIBRARY_LOG:<22} what the embedded PostgreSQL's tools printed"
        "\n  pgdata/log             the embedded PostgreSQL's own log"
        "\nLook inside with:"
        f"\n  receiver orders list --config {config}"
        f"\n  receiver notifications list --config {config}"
        f"\n  receiver orders show --config {config} {order}"
        f"\nRemove it with: rm -rf {workdir}"
    )


def _destination(url: str, secret: str) -> ForwardDestination:
    """The stand-in downstream service; retried half a second after its first refusal."""
    return ForwardDestination(name="stand-in", url=url, secret=secret, retry_s=(0.5,))


async def _forwarded(downstream: StandInDownstream) -> list[tuple[str, ...]]:
    """Once every paid order's event reached the stand-in (or the wait ends): one row each."""
    for _ in range(int(RECOVERY_TIMEOUT_S / RECOVERY_POLL_S)):
        if len(downstream.accepted) >= _PAID_ORDERS:
            break
        await asyncio.sleep(RECOVERY_POLL_S)
    return [
        (
            event["id"],
            event["type"],
            event["data"]["provider"],
            event["data"]["out_trade_no"],
            event["data"]["paid_amount"],
            str(downstream.attempts[event["id"]]),
            "verified",
        )
        for event in downstream.accepted
    ]


def _forwarding_problems(
    downstream: StandInDownstream, forwarded: Sequence[tuple[str, ...]]
) -> list[str]:
    wrong = []
    if len(forwarded) != _PAID_ORDERS:
        wrong.append(
            f"{len(forwarded)} events reached the downstream stand-in, expected {_PAID_ORDERS}"
        )
    if downstream.refused:
        wrong.append(f"{downstream.refused} forwarded events failed signature verification")
    return wrong


async def _run(
    runner: Runner, steps: Sequence[Step], stand_in: StandInGateway
) -> tuple[list[Seen], list[tuple[str, ...]]]:
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    pool = runner.app[POOL]
    async with pool.acquire() as conn:
        for order in _ORDERS:
            await create_order(conn, order)
    lost = _lost_payments()
    for payment in lost:
        stand_in.hold(payment)  # paid at the gateway; its notification is never sent
    seen = await _run_steps(f"http://127.0.0.1:{port}", steps, pool)
    deadline = asyncio.get_running_loop().time() + RECOVERY_TIMEOUT_S
    seen += [await _recovered(pool, payment, deadline=deadline) for payment in lost]
    seen.sort(key=lambda s: _GATEWAYS.index(s.gateway))
    return seen, await _final_orders(pool)


def _stand_in(keys: SimulatorKeys, gopay: GoPaySimulator) -> StandInGateway:
    client = GoPayClient(public_key=keys.merchant.public_key(), api_key=keys.api_key)
    return StandInGateway(
        platform=gopay,
        gopay_clients={GOPAY_MCHID: client},
        baofoo_keys={(BAOFOO_MEMBER, BAOFOO_TERMINAL): keys.md5_key},
    )


def _config(workdir: Path, keys: SimulatorKeys, gateway_url: str) -> Config:
    gopay_merchant = GoPayMerchant(
        mchid=GOPAY_MCHID,
        platform_public_keys=(keys.folder / PLATFORM_PUBLIC,),
        private_key=keys.folder / MERCHANT_PRIVATE,
        api_key=keys.api_key,
        default_channel=GOPAY_DEFAULT_CHANNEL,
    )
    baofoo_merchant = BaofooMerchant(
        member_id=BAOFOO_MEMBER, terminal_id=BAOFOO_TERMINAL, md5_key=keys.md5_key
    )
    return Config(
        database=DatabaseConfig(url="", data_dir=workdir),
        log=LogConfig(format="console", level="error"),
        gopay=GoPayConfig(merchants=(gopay_merchant,), api_url=gateway_url),
        baofoo=BaofooConfig(
            merchants=(baofoo_merchant,), query_url=gateway_url + BAOFOO_QUERY_PATH
        ),
        reconcile=DEMO_RECONCILE,
        source="(demo)",
    )


_GATEWAYS = ("gopay", "baofoo")
_PAID_ORDERS = 4  # a payment and a lost notification recovered, per gateway

_ORDERS = (
    NewOrder(provider="gopay", merchant_id=GOPAY_MCHID, out_trade_no="G-1001", amount_minor=10000),
    NewOrder(provider="gopay", merchant_id=GOPAY_MCHID, out_trade_no="G-1002", amount_minor=5000),
    NewOrder(provider="gopay", merchant_id=GOPAY_MCHID, out_trade_no="G-1003", amount_minor=3000),
    NewOrder(provider="baofoo", merchant_id=BAOFOO_MEMBER, out_trade_no="B-2001", amount_minor=100),
    NewOrder(provider="baofoo", merchant_id=BAOFOO_MEMBER, out_trade_no="B-2002", amount_minor=200),
    NewOrder(provider="baofoo", merchant_id=BAOFOO_MEMBER, out_trade_no="B-2003", amount_minor=300),
)

_EXPECTED = {
    "payment": "applied",
    "duplicate delivery": "duplicate",
    "forgery": "bad_signature",
    "wrong amount": "amount_mismatch",
    LOST: "applied",
}

# Each order's status and number of events afterwards: paid once, or left pending.
_EXPECTED_ORDERS: Mapping[str, tuple[str, str]] = {
    "G-1001": ("paid", "1"),
    "G-1002": ("pending", "0"),
    "G-1003": ("paid", "1"),
    "B-2001": ("paid", "1"),
    "B-2002": ("pending", "0"),
    "B-2003": ("paid", "1"),
}


def _lost_payments() -> list[Payment]:
    """The payments whose notifications are lost: the stand-in holds them for queries only."""
    return [
        Payment(
            provider="gopay", merchant_id=GOPAY_MCHID, out_trade_no="G-1003", amount_minor=3000
        ),
        Payment(
            provider="baofoo",
            merchant_id=BAOFOO_MEMBER,
            terminal_id=BAOFOO_TERMINAL,
            out_trade_no="B-2003",
            amount_minor=300,
        ),
    ]


def _steps(gopay: GoPaySimulator, md5_key: str) -> list[Step]:
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
        Step("baofoo", "payment", "B-2001", b_paid(md5_key, "B-2001", "100")),
        Step("baofoo", "duplicate delivery", "B-2001", b_paid(md5_key, "B-2001", "100")),
        Step("baofoo", "forgery", "B-2002", b_paid("guessed-key", "B-2002", "200")),
        Step("baofoo", "wrong amount", "B-2002", b_paid(md5_key, "B-2002", "2")),
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


async def _run_steps(base: str, steps: Sequence[Step], pool: asyncpg.Pool) -> list[Seen]:
    seen = []
    async with aiohttp.ClientSession() as http:
        for step in steps:
            body, headers = step.request()
            async with http.post(f"{base}/notify/{step.gateway}", data=body, headers=headers) as r:
                reply = (await r.read()).decode()
                status = r.status
            async with pool.acquire() as conn:
                row = await conn.fetchrow(LAST_NOTIFICATION, NOTIFY)
            seen.append(
                Seen(
                    gateway=step.gateway,
                    case=step.case,
                    order=step.order,
                    status=str(status),
                    reply=reply,
                    source=row["source"],
                    outcome=row["outcome"],
                )
            )
    return seen


async def _recovered(pool: asyncpg.Pool, payment: Payment, *, deadline: float) -> Seen:
    """The summary line of a lost payment: what the service's reconciler made of it."""
    row = await _first_query_reply(pool, payment, deadline=deadline)
    if row is None:
        reply, source, outcome = "(never sent)", "-", "not recovered"
    else:
        reply = f"(never sent; order query +{row['after_s']:.1f} s)"
        source, outcome = row["source"], row["outcome"]
    return Seen(
        gateway=payment.provider,
        case=LOST,
        order=payment.out_trade_no,
        status="-",
        reply=reply,
        source=source,
        outcome=outcome,
    )


async def _first_query_reply(
    pool: asyncpg.Pool, payment: Payment, *, deadline: float
) -> asyncpg.Record | None:
    """Wait for the reconciler to store the gateway's answer about `payment`; None: it did not."""
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        await asyncio.sleep(RECOVERY_POLL_S)
        async with pool.acquire() as conn:
            row: asyncpg.Record | None = await conn.fetchrow(FIRST_QUERY_REPLY, *payment.key, QUERY)
        if row is not None:
            return row
    return None


async def _final_orders(pool: asyncpg.Pool) -> list[tuple[str, ...]]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(FINAL_ORDERS)
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


def problems(seen: Sequence[Seen], orders: Sequence[tuple[str, ...]]) -> list[str]:
    """What did not go as it should: a case the receiver handled otherwise, an order's state."""
    found = [f"{s.gateway} {s.case}: {s.outcome}" for s in seen if not s.as_expected]
    return found + _order_problems(orders)


def _order_problems(orders: Sequence[tuple[str, ...]]) -> list[str]:
    found = {row[1]: (row[3], row[5]) for row in orders}
    wrong = []
    for order, (want_status, want_events) in _EXPECTED_ORDERS.items():
        status, events = found.get(order, ("missing", "0"))
        if (status, events) != (want_status, want_events):
            wrong.append(
                f"order {order}: {status} with {events} events,"
                f" expected {want_status} with {want_events}"
            )
    return wrong


def _money(minor: int | None) -> str:
    return "-" if minor is None else f"{minor // 100}.{minor % 100:02d}"


def _print_summary(
    seen: Sequence[Seen],
    orders: Sequence[tuple[str, ...]],
    wrong: Sequence[str],
    forwarded: Sequence[tuple[str, ...]],
) -> None:
    print("\nWhat reached the receiver, and what it made of it:\n")
    _table(
        ("gateway", "case", "order", "HTTP", "reply", "source", "outcome"),
        [(s.gateway, s.case, s.order, s.status, s.reply, s.source, s.outcome) for s in seen],
    )
    print("\nOrders afterwards:\n")
    _table(("gateway", "order", "amount", "status", "paid", "events"), orders)
    print("\nWhat the downstream stand-in received (signed webhooks, checked on arrival):\n")
    _table(("webhook-id", "type", "gateway", "order", "paid", "attempts", "signature"), forwarded)
    if wrong:
        print("\nNot as it should be:\n" + "\n".join(f"  {line}" for line in wrong))
        return
    print(
        "\nEach payment moved its order once; the duplicate was acknowledged without a second"
        "\nevent; the forgery and the wrong amount were refused, so the gateway would retry or"
        "\nan operator would look, and the orders they named stayed pending. The lost"
        "\nnotifications' orders were paid at the gateway, which never said so; the service's"
        "\nreconciler asked the gateway about them (here a second after they were created:"
        "\nreconcile.first_after_s = 1) and applied the signed answers like notifications."
        "\nEvery status change was forwarded to the downstream stand-in, signed as Standard"
        "\nWebhooks; it refused each event's first attempt on purpose (HTTP 500), and the"
        "\nreceiver sent it again with the same webhook-id until it was accepted."
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    for i, row in enumerate([header, *rows]):
        print(
            ("  " + "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True))).rstrip()
        )
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))
