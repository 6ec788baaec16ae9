"""Operators' commands as real processes: JSON lines on stdout, one stderr line on bad input."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.conftest import GOPAY_MCHID
from tests.support.cli import config_file, one_line, run
from tests.support.gateways import charge, post
from tests.support.stand_in import StandIn, start_stand_in


def lines(proc: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


@pytest.fixture
def cli(migrated: str, tmp_path: Path, gopay_key_file: Path, baofoo_md5_key: str) -> Any:
    conf = config_file(tmp_path, migrated, gopay_key_file, baofoo_md5_key)

    def receiver(*args: str) -> subprocess.CompletedProcess[str]:
        return run(*args, "--config", str(conf), cwd=tmp_path)

    return receiver


async def aged(db: asyncpg.Connection, out_trade_no: str, seconds: int) -> None:
    await db.execute(
        "UPDATE orders SET created_at = now() - make_interval(secs => $2) WHERE out_trade_no = $1",
        out_trade_no,
        seconds,
    )


async def test_orders_list_filters_and_prints_json_lines(db, make_order, cli):
    await make_order("L1")
    await make_order("L2", provider="baofoo")
    await make_order("L3")
    await aged(db, "L1", 120)  # pending past reconcile.first_after_s (60)
    await aged(db, "L2", 7200)
    await db.execute("UPDATE orders SET status = 'paid' WHERE out_trade_no = 'L2'")
    await db.execute(
        "INSERT INTO reviews (order_id, reason, detail)"
        " SELECT id, 'applied_late', 'late' FROM orders WHERE out_trade_no = 'L2'"
    )
    everything = lines(cli("orders", "list"))
    assert [o["out_trade_no"] for o in everything] == ["L3", "L2", "L1"]  # newest first
    assert {"needs_review", "created_at"} <= everything[0].keys()
    assert "open_reviews" not in everything[0]
    [flagged] = lines(cli("orders", "list", "--needs-review"))
    assert [(r["reason"], r["detail"], r["resolved_at"]) for r in flagged["open_reviews"]] == [
        ("applied_late", "late", None)
    ]

    def numbers(*args: str) -> list[str]:
        return [o["out_trade_no"] for o in lines(cli("orders", "list", *args))]

    assert numbers("--overdue") == ["L1"]
    assert numbers("--needs-review") == ["L2"]
    assert numbers("--provider", "gopay", "--status", "pending") == ["L3", "L1"]
    assert numbers("--older-than", "1h") == ["L2"]
    assert numbers("--older-than", "90s") == ["L2", "L1"]
    assert numbers("--limit", "1") == ["L3"]


async def test_orders_resolve_closes_the_named_review_and_keeps_the_note_and_when(
    db, make_order, cli
):
    await make_order("V1")
    review_id = await db.fetchval(
        "INSERT INTO reviews (order_id, reason, detail) SELECT id, 'applied_late', 'x'"
        " FROM orders RETURNING id"
    )
    assert await db.fetchval("SELECT needs_review FROM orders") is True
    [closed] = lines(cli("orders", "resolve", "--review", str(review_id), "--note", "refunded"))
    assert (closed["id"], closed["note"]) == (review_id, "refunded")
    row = await db.fetchrow("SELECT needs_review FROM orders")
    assert row["needs_review"] is False
    review = await db.fetchrow("SELECT note, resolved_at FROM reviews")
    assert review["note"] == "refunded" and review["resolved_at"] is not None
    again = cli("orders", "resolve", "--review", str(review_id), "--note", "again")
    assert again.returncode == 1 and f"review {review_id} is not open" in one_line(again)
    missing = cli("orders", "resolve", "--review", "999", "--note", "x")
    assert missing.returncode == 1 and "no review 999" in one_line(missing)
    empty = cli("orders", "resolve", "--review", str(review_id), "--note", " ")
    assert empty.returncode == 2 and "--note" in one_line(empty)
    assert await db.fetchval("SELECT note FROM reviews") == "refunded"


async def test_notifications_list_filters_without_bodies(client, db, signer, make_order, cli):
    await make_order("W1")
    assert (await post(client, signer, charge("W1")))[0] == 200
    assert (await post(client, signer, charge("W2")))[0] == 404
    listed = lines(cli("notifications", "list"))
    assert [(n["out_trade_no"], n["outcome"], n["source"]) for n in listed] == [
        ("W2", "unknown_order", "notify"),
        ("W1", "applied", "notify"),
    ]
    assert "body" not in listed[0] and "x-ca-signature" in listed[0]["headers"]
    assert [
        n["out_trade_no"] for n in lines(cli("notifications", "list", "--outcome", "applied"))
    ] == ["W1"]
    assert lines(cli("notifications", "list", "--source", "replay")) == []
    assert lines(cli("notifications", "list", "--provider", "baofoo")) == []
    assert len(lines(cli("notifications", "list", "--since", "15m"))) == 2


async def test_replay_command_applies_an_unknown_order_once(client, db, signer, make_order, cli):
    assert (await post(client, signer, charge("RP1")))[0] == 404
    await make_order("RP1")
    dry = lines(cli("replay", "--outcome", "unknown_order", "--dry-run"))
    assert [(r["outcome"], r["dry_run"]) for r in dry] == [("applied", True)]
    [first] = lines(cli("replay", "--outcome", "unknown_order", "--provider", "gopay"))
    [second] = lines(cli("replay", "--id", "1"))
    assert (first["replay_of"], first["outcome"], second["outcome"]) == (1, "applied", "duplicate")
    assert await db.fetchval("SELECT count(*) FROM order_events") == 1
    sources = lines(cli("notifications", "list", "--source", "replay"))
    assert [n["replay_of"] for n in sources] == [1, 1]


def test_replay_of_an_unknown_id_exits_1(db, cli):
    proc = cli("replay", "--id", "999")
    assert proc.returncode == 1 and "no stored notification with id 999" in one_line(proc)


def test_reconcile_without_a_query_client_names_the_key(db, cli):
    proc = cli("reconcile", "--provider", "baofoo")
    assert proc.returncode == 2 and "baofoo.query_url" in one_line(proc)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("orders", "list", "--provider", "paypal"), "--provider"),
        (("orders", "list", "--older-than", "3 days"), "not a duration"),
        (("orders", "list", "--limit", "0"), "--limit"),
        (("orders", "list", "--status", "lost"), "--status"),
        (("notifications", "list", "--since", "1w"), "not a duration"),
        (("notifications", "list", "--outcome", "fine"), "--outcome"),
        (("notifications", "list", "--source", "mail"), "--source"),
        (("replay",), "--id"),
        (("replay", "--id", "1", "--outcome", "expired"), "not allowed with"),
        (("replay", "--id", "x"), "--id"),
        (("replay", "--id", "1", "--provider", "gopay"), "go with --outcome"),
        (("replay", "--outcome", "unknown_order", "--since", "yesterday"), "not a duration"),
        (("reconcile", "--order", "gopay/100001"), "PROVIDER/MERCHANT/OUT_TRADE_NO"),
        (("reconcile", "--order", "paypal/1/2"), "unknown provider"),
        (("reconcile", "--provider", "paypal"), "--provider"),
        (("reconcile", "--provider", "gopay", "--order", "baofoo/1/2"), "different gateways"),
    ],
)
def test_bad_input_exits_2_with_one_line(db, cli, args, says):
    proc = cli(*args)
    assert proc.returncode == 2, proc.stderr
    line = one_line(proc)
    assert line.startswith("receiver: usage: ") and says in line
    assert proc.stdout == ""


async def receiver_process(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The command line as a process, awaited without blocking the stand-in on this loop."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "receiver.run.cli",
        *args,
        "--config",
        str(conf),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return subprocess.CompletedProcess(args, proc.returncode, out.decode(), err.decode())


@pytest.fixture
async def stand_in(aiohttp_server, gopay_key, baofoo_md5_key) -> StandIn:
    return await start_stand_in(aiohttp_server, platform_key=gopay_key, md5_key=baofoo_md5_key)


@pytest.fixture
def conf(migrated, tmp_path, gopay_key_file, baofoo_md5_key, stand_in) -> Path:
    return config_file(
        tmp_path, migrated, gopay_key_file, baofoo_md5_key, gateway_url=stand_in.base_url
    )


async def test_reconcile_asks_the_gateways_and_prints_one_line_per_order(
    db, make_order, stand_in, conf
):
    for number, provider in [("RC1", "gopay"), ("RC2", "baofoo"), ("RC3", "gopay")]:
        await make_order(number, provider=provider)
        await aged(db, number, 61)
    await make_order("RC4")  # not due yet
    stand_in.pay("gopay", "RC1")  # paid, but the notification was lost
    stand_in.pay("baofoo", "RC2")
    reports = lines(await receiver_process(conf, "reconcile"))
    assert sorted((r["out_trade_no"], r["result"], r["outcome"]) for r in reports) == [
        ("RC1", "paid", "applied"),
        ("RC2", "paid", "applied"),
        ("RC3", "not_found", None),
    ]
    statuses = await db.fetch("SELECT out_trade_no, status FROM orders ORDER BY out_trade_no")
    assert [tuple(r) for r in statuses] == [
        ("RC1", "paid"),
        ("RC2", "paid"),
        ("RC3", "pending"),
        ("RC4", "pending"),
    ]
    sources = await db.fetch("SELECT DISTINCT source FROM notifications")
    assert [r["source"] for r in sources] == ["query"]
    nothing_due = {"queried": 0, "providers": ["baofoo", "gopay"], "detail": "no order is due"}
    assert lines(await receiver_process(conf, "reconcile")) == [nothing_due]  # a line, not none
    order = f"gopay/{GOPAY_MCHID}/RC4"
    [now] = lines(await receiver_process(conf, "reconcile", "--order", order))
    assert (now["out_trade_no"], now["result"]) == ("RC4", "not_found")
    missing = await receiver_process(conf, "reconcile", "--order", f"gopay/{GOPAY_MCHID}/NONE")
    assert missing.returncode == 1 and "no gopay order NONE" in one_line(missing)


async def test_reconcile_exits_1_when_no_gateway_could_be_reached(
    db, make_order, migrated, tmp_path, gopay_key_file, baofoo_md5_key
):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"  # nobody listens there
    conf = config_file(tmp_path, migrated, gopay_key_file, baofoo_md5_key, gateway_url=closed)
    await make_order("RE1")
    await aged(db, "RE1", 61)
    proc = await receiver_process(conf, "reconcile")
    assert proc.returncode == 1
    assert [json.loads(line)["result"] for line in proc.stdout.splitlines()] == ["error"]
    assert "no gateway could be reached" in one_line(proc)
