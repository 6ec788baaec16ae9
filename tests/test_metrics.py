"""/metrics from a real `receiver serve`: its own listener, every worker's totals in one scrape,
counts that agree with the notifications table, and promtool's verdict on the exposition."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import structlog
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from receiver import metrics
from receiver.gateways import QueryResult
from receiver.run import observe
from tests.support.gateways import charge
from tests.support.metrics import samples
from tests.support.rawhttp import exchange, request
from tests.support.service_process import ServiceProcess, free_port, write_config
from tests.support.stand_in import API_KEY, merchant_key_file, start_stand_in

TOP = Path(__file__).resolve().parent.parent

# Every metric SPEC.md names, with its type and labels.
SPEC_METRICS = {
    "receiver_notifications": ("counter", {"provider", "outcome", "source"}),
    "receiver_notification_seconds": ("histogram", {"provider"}),
    "receiver_http_refusals": ("counter", {"provider", "status"}),
    "receiver_ledger_batch_size": ("histogram", set()),
    "receiver_database_up": ("gauge", set()),
    "receiver_reconcile_queries": ("counter", {"provider", "result"}),
    "receiver_orders_overdue": ("gauge", {"provider"}),
    "receiver_orders_needs_review": ("gauge", set()),
    "receiver_build_info": ("gauge", {"version"}),
    "receiver_reviews_open": ("gauge", {"reason"}),
}


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


@pytest.fixture
def metrics_service(start_service) -> Callable[..., ServiceProcess]:
    """`receiver serve` with a metrics listener on a free port (`svc.metrics_port`)."""

    def start(*, workers: int, env: dict[str, str] | None = None, **tables: Any) -> ServiceProcess:
        port = free_port()
        svc = start_service(workers=workers, env=env, metrics={"port": port}, **tables)
        svc.metrics_port = port  # type: ignore[attr-defined]
        return svc

    return start


async def deliver_mix(svc: ServiceProcess, signer: Any, orders: list[str]) -> Counter[int]:
    """Payments, their duplicates, forgeries and a wrong method, each on its own connection
    so that SO_REUSEPORT spreads them over the workers."""

    async def one(session: aiohttp.ClientSession, kind: str, no: str) -> int:
        body, headers = signer.notify(charge(no))
        if kind == "forged":
            headers = {**headers, "x-ca-signature": "Zm9yZ2Vk"}
        method = "PUT" if kind == "put" else "POST"
        url = svc.base_url + "/notify/gopay"
        async with session.request(method, url, data=body, headers=headers) as r:
            return r.status

    kinds = [(k, no) for no in orders for k in ("pay", "pay", "forged")]
    kinds += [("put", orders[0])] * 3
    connector = aiohttp.TCPConnector(force_close=True, limit=20)
    async with aiohttp.ClientSession(connector=connector) as session:
        return Counter(await asyncio.gather(*(one(session, k, no) for k, no in kinds)))


@pytest.mark.slow
async def test_one_scrape_of_two_workers_agrees_with_the_notifications_table(
    metrics_service, db, signer, make_order
):
    orders = [f"M{i:02d}" for i in range(20)]
    for no in orders:
        await make_order(no)
    await make_order("OLD-1")
    await db.execute(
        "UPDATE orders SET created_at = now() - interval '1 hour' WHERE out_trade_no = 'OLD-1'"
    )
    await db.execute(
        "INSERT INTO reviews (order_id, reason) SELECT id, 'applied_late' FROM orders"
        " WHERE out_trade_no = 'M00'"
    )
    svc = metrics_service(workers=2, reconcile={"first_after_s": 600})
    replies = await deliver_mix(svc, signer, orders)
    assert replies == {200: 40, 401: 20, 405: 3}
    text = await asyncio.to_thread(scrape, svc.metrics_port)

    counted = {
        (labels["provider"], labels["outcome"], labels["source"]): value
        for labels, value in samples(text, "receiver_notifications_total")
        if value
    }
    rows = await db.fetch(
        "SELECT provider, outcome, source, count(*) AS n FROM notifications GROUP BY 1, 2, 3"
    )
    assert counted == {(r["provider"], r["outcome"], r["source"]): r["n"] for r in rows}
    assert counted == {
        ("gopay", "applied", "notify"): 20,
        ("gopay", "duplicate", "notify"): 20,
        ("gopay", "bad_signature", "notify"): 20,
    }
    # Both workers counted: their notification lines name two pids.
    pids = {e["pid"] for e in svc.logs() if e.get("event") == "notification"}
    assert len(pids) == 2, pids
    # One starting line, from the supervisor, which ran the migrations before any worker.
    assert [e["pid"] for e in svc.logs() if e["event"] == "starting"] == [svc.pid]
    refusals = samples(text, "receiver_http_refusals_total")
    assert refusals == [({"provider": "gopay", "status": "405"}, 3.0)]
    seconds = dict(
        (labels["provider"], value)
        for labels, value in samples(text, "receiver_notification_seconds_count")
    )
    assert seconds["gopay"] == 63
    # Verified notifications go through batches; refused ones are written on their own.
    assert sum(v for _, v in samples(text, "receiver_ledger_batch_size_sum")) == 40
    assert samples(text, "receiver_database_up") == [({}, 1.0)]
    assert samples(text, "receiver_build_info") == [({"version": observe.version()}, 1.0)]
    overdue = {labels["provider"]: v for labels, v in samples(text, "receiver_orders_overdue")}
    assert overdue == {"gopay": 1.0, "baofoo": 0.0}
    assert samples(text, "receiver_orders_needs_review") == [({}, 1.0)]
    found = families(text)
    for name, (kind, labels) in SPEC_METRICS.items():
        assert found[name].type == kind, name
        assert all(set(s.labels) - {"le"} == labels for s in found[name].samples), name


@pytest.mark.slow
async def test_metrics_are_served_on_their_own_port_only(metrics_service):
    svc = metrics_service(workers=1)
    assert await asyncio.to_thread(svc.get, "/metrics") == 404
    text = await asyncio.to_thread(scrape, svc.metrics_port)
    assert set(SPEC_METRICS) - {"receiver_orders_overdue"} <= set(families(text))
    starting = [e for e in svc.logs() if e["event"] == "starting"]
    assert len(starting) == 1
    assert starting[0]["metrics"] == f"127.0.0.1:{svc.metrics_port}"


PROMTOOL = shutil.which("promtool")


@pytest.mark.slow
@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (deploy/check.sh does)")
@pytest.mark.parametrize("workers", [1, 2])
async def test_promtool_check_metrics_passes_on_a_real_scrape(
    metrics_service, signer, make_order, workers
):
    await make_order("P1")
    svc = metrics_service(workers=workers)
    await deliver_mix(svc, signer, ["P1"])
    text = await asyncio.to_thread(scrape, svc.metrics_port)
    assert PROMTOOL is not None
    checked = await asyncio.to_thread(
        subprocess.run,
        [PROMTOOL, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


# --- in-process counting (the test client, the default registry) -------------------------


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_refusals_without_an_outcome_are_counted_by_status(client):
    before = value("receiver_http_refusals_total", provider="baofoo", status="405")
    resp = await client.get("/notify/baofoo")
    assert resp.status == 405
    after = value("receiver_http_refusals_total", provider="baofoo", status="405")
    assert after - before == 1


async def test_each_committed_notification_is_counted_once_by_outcome(client, signer, make_order):
    await make_order("C1")
    labels = {"provider": "gopay", "source": "notify"}
    before = {o: value("receiver_notifications_total", outcome=o, **labels) for o in OUTCOMES}
    for _ in range(2):
        body, headers = signer.notify(charge("C1"))
        assert (await client.post("/notify/gopay", data=body, headers=headers)).status == 200
    body, headers = signer.notify(charge("NOPE"))
    assert (await client.post("/notify/gopay", data=body, headers=headers)).status == 404
    after = {o: value("receiver_notifications_total", outcome=o, **labels) for o in OUTCOMES}
    assert {o: after[o] - before[o] for o in OUTCOMES} == {
        "applied": 1,
        "duplicate": 1,
        "unknown_order": 1,
    }


OUTCOMES = ("applied", "duplicate", "unknown_order")


async def test_overdue_counts_pending_orders_past_first_after_s(db: asyncpg.Connection, make_order):
    await make_order("NEW")
    await make_order("OLD", provider="baofoo", merchant_id="100000178")
    await make_order("LATE")
    await db.execute(
        "UPDATE orders SET created_at = now() - interval '10 minutes' "
        "WHERE out_trade_no IN ('OLD', 'LATE')"
    )
    await db.execute("UPDATE orders SET status = 'paid' WHERE out_trade_no = 'LATE'")
    for reason in ("applied_late", "paid_amount_differs", "paid_amount_differs"):
        await db.execute(
            "INSERT INTO reviews (order_id, reason, amount_minor, detail)"
            " SELECT id, $1, (SELECT count(*) FROM reviews), '' FROM orders"
            " WHERE out_trade_no = 'LATE'",
            reason,
        )
    await db.execute(
        "UPDATE reviews SET resolved_at = now(), note = 'done' WHERE reason = 'applied_late'"
    )
    watch = metrics.OrdersWatch(build_version="t")
    await watch.refresh(db, overdue_after_s=300)
    reviews = {"applied_late": 0, "amount_mismatch": 0, "currency_mismatch": 0}
    reviews["paid_amount_differs"] = 2
    assert watch.counts == metrics.OrderCounts({"gopay": 0, "baofoo": 1}, 1, reviews)
    registry = CollectorRegistry()
    registry.register(watch)
    exposed = samples(generate_latest(registry).decode(), "receiver_reviews_open")
    assert {labels["reason"]: value for labels, value in exposed} == reviews


async def test_an_outage_is_logged_once_each_way_and_database_up_follows(
    db, signer, make_order, proxied
):
    await make_order("H1")
    client, proxy = proxied
    refused_before = value("receiver_http_refusals_total", provider="gopay", status="503")
    await proxy.cut()
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            body, headers = signer.notify(charge("H1"))
            assert (await client.post("/notify/gopay", data=body, headers=headers)).status == 503
        assert (await client.get("/readyz")).status == 503
        assert value("receiver_database_up") == 0
        await proxy.restore()
        body, headers = signer.notify(charge("H1"))
        assert (await client.post("/notify/gopay", data=body, headers=headers)).status == 200
        assert (await client.get("/readyz")).status == 200
    events = [e["event"] for e in logs]
    assert events.count("database_unavailable") == 1
    assert events.count("database_recovered") == 1
    assert value("receiver_database_up") == 1
    refused = value("receiver_http_refusals_total", provider="gopay", status="503")
    assert refused - refused_before == 3


def test_a_metrics_port_in_use_exits_1_with_one_line(migrated, gopay_key_file, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(
            tmp_path / "taken.toml", gopay_key_file=gopay_key_file, metrics={"port": port}
        )
        svc = ServiceProcess(config, env={"RECEIVER_DATABASE_URL": migrated}).start()
        assert svc.wait(30) == 1
    assert svc.stderr_lines() == [
        f"receiver: metrics listener 127.0.0.1:{port}: Address already in use"
    ]


@pytest.mark.parametrize(
    "extra", [b"X-Bad: a\x01b\r\n", b"Expect: 200-ok\r\n"], ids=["parser", "handler"]
)
async def test_a_400_before_any_outcome_is_a_refusal(client, extra):
    before = value("receiver_http_refusals_total", provider="baofoo", status="400")
    server = client.server
    reply = await exchange(server.host, server.port, request("/notify/baofoo", extra=extra))
    assert reply.status == 400
    after = value("receiver_http_refusals_total", provider="baofoo", status="400")
    assert after - before == 1


def test_order_queries_are_counted_under_spec_result_names():
    assert [r.value for r in QueryResult] == [
        "paid",
        "failed",
        "closed",
        "pending",
        "not_found",
        "held",
        "refused",
        "misconfigured",
        "limited",
        "error",
    ]
    before = value("receiver_reconcile_queries_total", provider="gopay", result="not_found")
    metrics.reconcile_query_answered("gopay", QueryResult.NOT_FOUND)
    after = value("receiver_reconcile_queries_total", provider="gopay", result="not_found")
    assert after - before == 1


WORKER = """
from receiver import metrics
metrics.DATABASE_UP.set(0)
metrics.notification_recorded("gopay", "applied", "notify")
"""


def test_an_exited_worker_keeps_its_counts_and_loses_its_live_gauge(tmp_path, monkeypatch):
    env = {**os.environ, metrics.MULTIPROC_ENV: str(tmp_path), "PYTHONPATH": str(TOP)}
    worker = subprocess.run([sys.executable, "-c", WORKER], env=env, check=True)
    assert worker.returncode == 0
    [db_file] = tmp_path.glob("gauge_livemin_*.db")
    pid = int(db_file.stem.rsplit("_", 1)[1])
    registry = metrics.workers_registry(str(tmp_path), metrics.OrdersWatch(build_version="t"))

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert sample("receiver_database_up") == 0
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path))
    metrics.worker_exited(pid)
    assert sample("receiver_database_up") is None
    counted = sample(
        "receiver_notifications_total", provider="gopay", outcome="applied", source="notify"
    )
    assert counted == 1


@pytest.mark.slow
async def test_workers_count_in_a_fresh_directory_removed_at_exit(metrics_service, tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    svc = metrics_service(workers=2, env={"TMPDIR": str(tmp)})
    [run_dir] = tmp.glob("receiver-metrics-*")
    assert any(run_dir.glob("counter_*.db"))  # the workers' files
    svc.signal(signal.SIGTERM)
    assert await asyncio.to_thread(svc.wait, 30) == 0
    assert not run_dir.exists()


@pytest.mark.slow
async def test_order_queries_of_two_workers_are_counted_once_each_and_agree_with_the_table(
    db, make_order, migrated, aiohttp_server, gopay_key, gopay_key_file, baofoo_md5_key, tmp_path
):
    stand_in = await start_stand_in(aiohttp_server, platform_key=gopay_key, md5_key=baofoo_md5_key)
    for no in ("Q1", "Q2", "Q3"):
        await make_order(no)
        stand_in.pay("gopay", no)  # paid; the notification never came
    await db.execute("UPDATE orders SET created_at = now() - interval '10 seconds'")
    port = free_port()
    config = write_config(
        tmp_path / "queries.toml",
        gopay_key_file=gopay_key_file,
        gopay={"api_url": stand_in.base_url},
        reconcile={"first_after_s": 1, "intervals_s": [1], "timeout_s": 5},
        metrics={"port": port},
    )
    with config.open("a") as f:
        f.write(f'private_key = "{merchant_key_file(tmp_path)}"\napi_key = "{API_KEY}"\n')
        f.write('default_channel = "gopay_banktransfer"\n')
    with ServiceProcess(config, env={"RECEIVER_DATABASE_URL": migrated}, workers=2) as svc:
        svc.start()
        await asyncio.to_thread(svc.wait_ready, 40)
        async with asyncio.timeout(30):
            while await db.fetchval("SELECT count(*) FROM order_events") < 3:  # noqa: ASYNC110
                await asyncio.sleep(0.2)
        text = await asyncio.to_thread(scrape, port)
    queried = {
        labels["result"]: value
        for labels, value in samples(text, "receiver_reconcile_queries_total")
        if labels["provider"] == "gopay" and value
    }
    assert queried == {"paid": 3}, svc.output()
    counted = {
        (labels["outcome"], labels["source"]): value
        for labels, value in samples(text, "receiver_notifications_total")
        if value
    }
    rows = await db.fetch("SELECT outcome, source, count(*) FROM notifications GROUP BY 1, 2")
    assert counted == {(r[0], r[1]): r[2] for r in rows} == {("applied", "query"): 3}
