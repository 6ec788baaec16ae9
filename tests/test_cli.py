"""The `receiver` command line, run as a real process."""

from __future__ import annotations

import base64
import json
import re

import pytest

from receiver.gateways.gopay import denied_keys
from tests.support.cli import one_line, run
from tests.support.service_process import write_config

pytestmark = pytest.mark.usefixtures("db")


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("frobnicate",),
        ("orders",),
        ("orders", "add", "--provider", "gopay"),
        ("serve", "--port", "x"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args, tmp_path):
    proc = run(*args, cwd=tmp_path)
    assert proc.returncode == 2
    assert one_line(proc).startswith("receiver: usage: ")


def test_orders_add_then_show(migrated, tmp_path, gopay_key_file):
    write_config(tmp_path / "receiver.toml", gopay_key_file=gopay_key_file)  # merchant 100001
    env = {"RECEIVER_DATABASE_URL": migrated}
    key = ("--provider", "gopay", "--merchant", "100001", "--out-trade-no", "CLI-1")
    added = run(
        "orders",
        "add",
        *key,
        "--amount",
        "100.00",
        "--channel",
        "gopay_bankupi",
        env=env,
        cwd=tmp_path,
    )
    assert added.returncode == 0, added.stderr
    order = json.loads(added.stdout)
    assert (order["status"], order["amount_minor"], order["currency"], order["channel"]) == (
        "pending",
        10000,
        "CNY",
        "gopay_bankupi",
    )
    shown = run("orders", "show", *key, env=env, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["id"] == order["id"]
    assert json.loads(shown.stdout)["notifications"] == []
    again = run("orders", "add", *key, "--amount", "100.00", env=env, cwd=tmp_path)
    assert again.returncode == 1 and "exists" in one_line(again)


@pytest.mark.parametrize("amount", ["1.665", "abc", "0"])
def test_orders_add_refuses_bad_amount(migrated, tmp_path, amount):
    proc = run(
        "orders",
        "add",
        "--provider",
        "gopay",
        "--merchant",
        "1",
        "--out-trade-no",
        "X",
        "--amount",
        amount,
        env={"RECEIVER_DATABASE_URL": migrated},
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and "--amount" in one_line(proc)


def test_orders_show_unknown_order_exits_1(migrated, tmp_path):
    proc = run(
        "orders",
        "show",
        "--provider",
        "baofoo",
        "--merchant",
        "1",
        "--out-trade-no",
        "none",
        env={"RECEIVER_DATABASE_URL": migrated},
        cwd=tmp_path,
    )
    assert proc.returncode == 1 and "no baofoo order" in one_line(proc)


def test_migrate_reports_current_schema(migrated, tmp_path):
    proc = run("migrate", env={"RECEIVER_DATABASE_URL": migrated}, cwd=tmp_path)
    assert (proc.returncode, proc.stdout.strip()) == (0, "schema is current")


def test_unreachable_database_exits_1_without_the_password(tmp_path):
    url = "postgresql://postgres:hunter2@127.0.0.1:1/nowhere"
    proc = run("migrate", env={"RECEIVER_DATABASE_URL": url}, cwd=tmp_path)
    assert proc.returncode == 1
    line = one_line(proc)
    assert "database unavailable" in line and "hunter2" not in line


def test_bad_config_exits_2_naming_file_and_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[server]\nport = 99999\n")
    proc = run("migrate", "--config", str(path), cwd=tmp_path)
    assert proc.returncode == 2
    assert (
        one_line(proc)
        == f"receiver: configuration error: {path}: server.port: must be a port number (0-65535)"
    )


def test_serve_refuses_deny_listed_platform_key(migrated, tmp_path):
    denied = next(iter(denied_keys()))
    (tmp_path / "platform.b64").write_text(base64.b64encode(denied).decode() + "\n")
    (tmp_path / "receiver.toml").write_text(
        '[[gopay.merchants]]\nmchid = "100001"\nplatform_public_keys = ["platform.b64"]\n'
    )
    proc = run("serve", "--port", "0", env={"RECEIVER_DATABASE_URL": migrated}, cwd=tmp_path)
    assert proc.returncode == 2
    line = one_line(proc)
    assert "gopay.merchants[0].platform_public_keys[0]" in line and "default" in line
    assert base64.b64encode(denied).decode()[:40] not in line


def test_demo_runs_the_whole_loop_and_recovers_lost_notifications(tmp_path):
    proc = run("demo", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for expected in ("applied", "duplicate", "bad_signature", "amount_mismatch", "SUCCESS", "OK"):
        assert expected in proc.stdout
    lost = re.findall(
        r"^\s+(\w+)\s+lost notification\s+([GB]-\d+)\s+-\s+\(never sent; order query \+[\d.]+ s\)"
        r"\s+query\s+applied$",
        proc.stdout,
        re.MULTILINE,
    )
    assert lost == [("gopay", "G-1003"), ("baofoo", "B-2003")]
    paid_once = re.findall(
        r"^\s+\w+\s+([GB]-\d+)\s+[\d.]+\s+paid\s+[\d.]+\s+1$", proc.stdout, re.MULTILINE
    )
    assert paid_once == ["G-1001", "G-1003", "B-2001", "B-2003"]
    forwarded = re.findall(
        r"^\s+\d+\s+order\.paid\s+\w+\s+([GB]-\d+)\s+[\d.]+\s+2\s+verified$",
        proc.stdout,
        re.MULTILINE,
    )
    assert sorted(forwarded) == ["B-2001", "B-2003", "G-1001", "G-1003"]  # refused once, then taken
    assert "Not as it should be" not in proc.stdout
    assert not list(tmp_path.iterdir())  # the demo leaves nothing behind
