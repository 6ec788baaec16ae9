"""What the commands print and what they need, through the real `receiver` process: stdout is the
command's output only (JSON lines) in every database mode; a command reads only the secrets it
uses; serve and check-config refuse a configuration with no merchant. Never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from receiver.config import Config, DeferredSecret, parse_config
from receiver.errors import ConfigError
from tests.conftest import BAOFOO_MEMBER, BAOFOO_TERMINAL, GOPAY_MCHID
from tests.support.service_process import ServiceProcess, free_port

SECRET_VARIABLES = ("GOPAY_API_KEY", "BAOFOO_MD5_KEY")


def receiver(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`receiver ARGS` with no RECEIVER_* and no gateway secret in its environment but `env`."""
    full = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("RECEIVER_") and k not in SECRET_VARIABLES
    }
    return subprocess.run(
        [sys.executable, "-m", "receiver.run.cli", *args],
        capture_output=True,
        text=True,
        env=full | (env or {}),
        cwd=cwd,
        timeout=120,
        check=False,
    )


def json_lines(proc: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    """Every stdout line of a command that succeeded, each a JSON object; stderr clean."""
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def merchants(key_file: Path, *, secrets_from_env: bool) -> str:
    """One merchant per gateway, their secrets from GOPAY_API_KEY and BAOFOO_MD5_KEY or inline."""
    gopay_secret = 'api_key_env = "GOPAY_API_KEY"' if secrets_from_env else ""
    baofoo_secret = (
        'md5_key_env = "BAOFOO_MD5_KEY"' if secrets_from_env else 'md5_key = "0123456789abcdef"'
    )
    return (
        f'[[gopay.merchants]]\nmchid = "{GOPAY_MCHID}"\n'
        f"platform_public_keys = [{json.dumps(str(key_file))}]\n{gopay_secret}\n"
        f'[[baofoo.merchants]]\nmember_id = "{BAOFOO_MEMBER}"\n'
        f'terminal_id = "{BAOFOO_TERMINAL}"\n{baofoo_secret}\n'
    )


# -- stdout: the command's output only, with the embedded database ------------------------------


@pytest.fixture
def embedded_home(gopay_key_file: Path) -> Iterator[Path]:
    """A folder with two configurations on one embedded database: json.toml (JSON logs, for
    serve) and console.toml (console logs, which broke jq most plainly)."""
    # Not under tmp_path: the embedded server runs as its own user when the tests run as root.
    home = Path(tempfile.mkdtemp(prefix="receiver-out-"))
    shared = (
        f"[database]\ndata_dir = {json.dumps(str(home / 'data'))}\n[metrics]\nport = 0\n"
        + merchants(gopay_key_file, secrets_from_env=False)
    )
    (home / "json.toml").write_text(shared)
    (home / "console.toml").write_text('[log]\nformat = "console"\n' + shared)
    try:
        yield home
    finally:
        receiver("migrate", "--config", str(home / "json.toml"), cwd=home)  # stops it if left
        shutil.rmtree(home, ignore_errors=True)


def read_commands(home: Path) -> None:
    """orders list and notifications list, piped: every stdout line parses as JSON."""
    config = ("--config", str(home / "console.toml"))
    orders = json_lines(receiver("orders", "list", *config, cwd=home))
    assert [o["out_trade_no"] for o in orders] == ["OUT-1"]
    assert json_lines(receiver("notifications", "list", *config, cwd=home)) == []


@pytest.mark.slow
def test_embedded_database_commands_print_only_json_lines_with_and_without_serve(
    embedded_home: Path,
):
    home = embedded_home
    config = ("--config", str(home / "console.toml"))
    migrated = receiver("migrate", *config, cwd=home)
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.startswith("applied: ") and migrated.stdout.count("\n") == 1
    key = ("--provider", "gopay", "--merchant", GOPAY_MCHID, "--out-trade-no", "OUT-1")
    added = receiver("orders", "add", *config, *key, "--amount", "1.00", cwd=home)
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["out_trade_no"] == "OUT-1"  # one JSON document, nothing else
    read_commands(home)
    svc = ServiceProcess(home / "json.toml", port=free_port())
    with svc.start():
        svc.wait_ready(60)
        read_commands(home)
        svc.stop()
    assert all(json.loads(line) for line in svc.stdout_lines())  # serve's own: JSON logs only
    read_commands(home)
    assert "pg_ctl" in (home / "data" / "embedded-postgres.log").read_text()


# -- secrets: read where they are used ----------------------------------------------------------


@pytest.fixture
def secret_config(tmp_path: Path, gopay_key_file: Path) -> Path:
    path = tmp_path / "receiver.toml"
    path.write_text(merchants(gopay_key_file, secrets_from_env=True))
    return path


BAOFOO_BODY = (
    f"MemberID={BAOFOO_MEMBER}&TerminalID={BAOFOO_TERMINAL}&TransID=B-1&Result=1&ResultDesc=01"
    "&FactMoney=100&AdditionalInfo=&SuccTime=20260101120000&Md5Sign=00"
).encode()
INSERT_NOTE = """
INSERT INTO notifications (provider, remote_addr, body, outcome, merchant_id, out_trade_no)
VALUES ($1, '127.0.0.1', $2, 'unknown_order', $3, $4)
"""


async def test_read_commands_need_no_gateway_secret(
    db: asyncpg.Connection, migrated: str, secret_config: Path, tmp_path: Path
):
    await db.execute(INSERT_NOTE, "baofoo", BAOFOO_BODY, BAOFOO_MEMBER, "B-1")
    await db.execute(INSERT_NOTE, "gopay", b"{}", GOPAY_MCHID, "G-1")
    env = {"RECEIVER_DATABASE_URL": migrated}
    key = ("--provider", "gopay", "--merchant", GOPAY_MCHID, "--out-trade-no", "G-1")
    added = receiver("orders", "add", *key, "--amount", "2.00", env=env, cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    shown = receiver("orders", "show", *key, env=env, cwd=tmp_path)
    assert shown.returncode == 0 and json.loads(shown.stdout)["out_trade_no"] == "G-1"
    assert len(json_lines(receiver("orders", "list", env=env, cwd=tmp_path))) == 1
    assert len(json_lines(receiver("notifications", "list", env=env, cwd=tmp_path))) == 2
    dry = receiver("replay", "--outcome", "unknown_order", "--dry-run", env=env, cwd=tmp_path)
    by_provider = {line["provider"]: line for line in json_lines(dry)}
    assert by_provider["gopay"]["outcome"] == "malformed"  # verified: GoPay's keys are files
    assert by_provider["baofoo"]["outcome"] is None
    assert "BAOFOO_MD5_KEY" in str(by_provider["baofoo"]["reason"])
    assert await db.fetchval("SELECT count(*) FROM notifications") == 2  # dry: nothing stored


def test_check_config_shows_which_secrets_are_set_and_warns_of_the_missing(
    secret_config: Path, tmp_path: Path
):
    proc = receiver("check-config", env={"GOPAY_API_KEY": "k-123"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "k-123" not in proc.stdout + proc.stderr
    shown = json.loads(proc.stdout)
    assert {s["variable"]: s["set"] for s in shown["secrets"]} == {
        "GOPAY_API_KEY": True,
        "BAOFOO_MD5_KEY": False,
    }
    assert proc.stderr.count("\n") == 1
    assert "warning: serve would refuse to start" in proc.stderr
    assert "BAOFOO_MD5_KEY" in proc.stderr


@pytest.mark.parametrize(
    ("command", "variable"),
    [
        (("serve", "--port", "0"), "GOPAY_API_KEY"),
        (("replay", "--outcome", "unknown_order"), "BAOFOO_MD5_KEY"),
        (("reconcile", "--provider", "baofoo"), "BAOFOO_MD5_KEY"),
    ],
    ids=["serve", "replay", "reconcile"],
)
def test_commands_that_use_a_secret_say_which_variable_is_missing(
    migrated: str, secret_config: Path, tmp_path: Path, command: tuple[str, ...], variable: str
):
    proc = receiver(*command, env={"RECEIVER_DATABASE_URL": migrated}, cwd=tmp_path)
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1
    assert f"environment variable {variable}: is not set" in proc.stderr


def test_replay_of_gopay_only_needs_no_baofoo_key(
    migrated: str, secret_config: Path, tmp_path: Path
):
    args = ("replay", "--outcome", "unknown_order", "--provider", "gopay")
    proc = receiver(*args, env={"RECEIVER_DATABASE_URL": migrated}, cwd=tmp_path)
    json_lines(proc)


# -- no merchant: serve and check-config refuse, saying where they looked ------------------------


def test_serve_in_an_empty_folder_refuses_naming_where_it_looked(migrated: str, tmp_path: Path):
    proc = receiver("serve", "--port", "0", env={"RECEIVER_DATABASE_URL": migrated}, cwd=tmp_path)
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stdout == ""
    assert "no merchant configured" in proc.stderr
    assert str(tmp_path / "receiver.toml") in proc.stderr and "RECEIVER_CONFIG" in proc.stderr
    assert not (tmp_path / ".receiver").exists()  # no fresh empty embedded database either


def test_check_config_with_no_merchant_is_an_error(tmp_path: Path):
    config = tmp_path / "empty.toml"
    config.write_text('[log]\nlevel = "info"\n')
    proc = receiver("check-config", "--config", str(config), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stdout == ""
    assert f"{config}: [[gopay.merchants]], [[baofoo.merchants]]: no merchant" in proc.stderr


# -- out-of-range arguments: exit 2, one line -----------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("orders", "list", "--limit", "99999999999999999999"), "--limit: 99999999999999999999 is"),
        (("orders", "list", "--limit", "-5"), "--limit: '-5' is not a whole number"),
        (("orders", "list", "--limit", "0"), "--limit: '0' is not a whole number"),
        (("notifications", "list", "--since", "99999999d"), "'99999999d' is out of range"),
        (("orders", "list", "--older-than", "999999999h"), "'999999999h' is out of range"),
        (("replay", "--id", "99999999999999999999"), "--id: 99999999999999999999 is out of"),
    ],
    ids=["limit-huge", "limit-negative", "limit-zero", "since-huge", "older-than-huge", "id-huge"],
)
def test_out_of_range_arguments_exit_2_with_one_line(
    migrated: str, tmp_path: Path, args: tuple[str, ...], words: str
):
    proc = receiver(*args, env={"RECEIVER_DATABASE_URL": migrated}, cwd=tmp_path)
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stdout == ""
    assert proc.stderr.startswith("receiver: usage: ") and words in proc.stderr


def test_serve_refuses_more_workers_than_it_allows(tmp_path: Path, gopay_key_file: Path):
    (tmp_path / "receiver.toml").write_text(merchants(gopay_key_file, secrets_from_env=False))
    nowhere = {"RECEIVER_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/x"}
    proc = receiver("serve", "--port", "0", "--workers", "65", env=nowhere, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    assert proc.stderr == "receiver: usage: --workers 65 is out of range (at most 64)\n"


def test_the_largest_arguments_in_range_work(migrated: str, tmp_path: Path):
    env = {"RECEIVER_DATABASE_URL": migrated}
    biggest = ("--limit", str(2**63 - 1))
    json_lines(
        receiver("orders", "list", *biggest, "--older-than", "36500d", env=env, cwd=tmp_path)
    )
    json_lines(
        receiver("notifications", "list", *biggest, "--since", "36500d", env=env, cwd=tmp_path)
    )


# -- --help says what each option is and its default ---------------------------------------------


def test_serve_help_gives_every_option_a_text_and_its_default(tmp_path: Path):
    proc = receiver("serve", "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    assert "--config F TOML configuration file (default: $RECEIVER_CONFIG" in text
    assert "--host HOST address to listen on (default: server.host" in text
    assert "--port PORT port to listen on, 0 for any free one (default: server.port, 8080)" in text
    assert "--workers WORKERS processes sharing the port, 1 to 64 (default: 1)" in text
    listed = " ".join(receiver("orders", "list", "--help", cwd=tmp_path).stdout.split())
    assert "--limit LIMIT most lines (default: 1000)" in listed


# -- an unknown configuration key: did you mean ---------------------------------------------------


def test_an_unknown_config_key_suggests_the_likely_one(tmp_path: Path, gopay_key_file: Path):
    listed = merchants(gopay_key_file, secrets_from_env=False)
    (tmp_path / "receiver.toml").write_text(f'[gopay]\napi_ur = "https://x.example"\n{listed}')
    proc = receiver("check-config", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "receiver.toml: gopay.api_ur: unknown key (did you mean gopay.api_url?)" in proc.stderr
    (tmp_path / "receiver.toml").write_text("[nothing_like_it]\nx = 1\n")
    far = receiver("check-config", cwd=tmp_path)
    assert far.returncode == 2 and "nothing_like_it: unknown key\n" in far.stderr


# -- database_waiting: where, for how much longer, and not every second ---------------------------


def test_serve_waiting_for_a_database_says_where_and_until_when_at_growing_intervals(
    tmp_path: Path, gopay_key_file: Path
):
    config = tmp_path / "receiver.toml"
    config.write_text("[metrics]\nport = 0\n" + merchants(gopay_key_file, secrets_from_env=False))
    port = free_port()  # nobody listens: the database is "not up yet"
    env = {"RECEIVER_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{port}/nowhere"}
    svc = ServiceProcess(config, env=env)
    with svc.start():
        first = svc.wait_for_log(lambda e: e.get("event") == "database_waiting", timeout=30)
        time.sleep(5.5)
        waiting = [e for e in svc.logs() if e.get("event") == "database_waiting"]
        svc.stop()
    assert first["address"] == f"127.0.0.1:{port}"
    assert 25 <= first["giving_up_in_s"] <= 30
    assert first["message"] == f"giving up in {first['giving_up_in_s']} s"
    assert 2 <= len(waiting) <= 3  # at once, after 2 s, after 6 s: not one a second
    assert waiting[1]["giving_up_in_s"] < first["giving_up_in_s"]
    assert "Traceback" not in "".join(svc.stderr_lines())


# -- simulate pay --wait: the receiver's reply and what it means ----------------------------------


@pytest.fixture
def stand_in_process(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A real `receiver simulate serve`: its base URL and the configuration it printed."""
    argv = [sys.executable, "-m", "receiver.run.cli", "simulate", "serve", "--port", "0"]
    with subprocess.Popen(
        [*argv, "--keys-dir", str(tmp_path / "keys")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    ) as proc:
        assert proc.stdout is not None
        try:
            printed: list[str] = []
            for line in proc.stdout:
                if line.startswith("# listening on "):
                    break
                printed.append(line)
            yield line.split()[3].rstrip(";"), "".join(printed)
        finally:
            proc.terminate()
            proc.wait(timeout=10)


@pytest.mark.usefixtures("db")
def test_simulate_pay_wait_prints_the_receivers_reply_and_outcome(
    migrated: str, tmp_path: Path, stand_in_process: tuple[str, str]
):
    gateway, snippet = stand_in_process
    config = tmp_path / "receiver.toml"
    config.write_text("[metrics]\nport = 0\n" + snippet)
    env = {"RECEIVER_DATABASE_URL": migrated}
    svc = ServiceProcess(config, env=env)
    key = ("--provider", "gopay", "--merchant", GOPAY_MCHID)
    with svc.start():
        svc.wait_ready(30)
        added = receiver(
            "orders",
            "add",
            *key,
            "--out-trade-no",
            "W-1",
            "--amount",
            "3.00",
            env=env,
            cwd=tmp_path,
        )
        assert added.returncode == 0, added.stderr
        pay = ("simulate", "pay", "--gateway", gateway, *key, "--amount", "3.00", "--wait")
        notify = ("--notify-url", f"{svc.base_url}/notify/gopay")
        paid = json_lines(receiver(*pay, "--out-trade-no", "W-1", *notify, cwd=tmp_path))
        unknown = json_lines(receiver(*pay, "--out-trade-no", "W-2", *notify, cwd=tmp_path))
    assert paid[0]["first_attempt"] == {
        "attempt": 1,
        "status": 200,
        "reply": '{"result_code":"OK","result_msg":"SUCCESS"}',
        "acknowledged": True,
        "outcome": "acknowledged",
    }
    refused = unknown[0]["first_attempt"]
    assert (refused["status"], refused["acknowledged"]) == (404, False)
    assert refused["outcome"] == "refused: the gateway will retry"


# -- demo --keep: its configuration and log, and how to look inside -------------------------------


@pytest.mark.slow
def test_demo_keep_keeps_its_config_and_log_and_says_how_to_look_inside(tmp_path: Path):
    proc = receiver("demo", "--keep", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    kept = Path(proc.stdout.split("Kept in ", 1)[1].split(":", 1)[0])
    try:
        config = kept / "receiver.toml"
        assert f"receiver orders list --config {config}" in proc.stdout
        assert all(json.loads(line) for line in (kept / "receiver.log").read_text().splitlines())
        assert '"outcome":"applied"' in (kept / "receiver.log").read_text()
        orders = json_lines(receiver("orders", "list", "--config", str(config), cwd=tmp_path))
        assert sorted(o["out_trade_no"] for o in orders if o["status"] == "paid") == [
            "B-2001",
            "B-2003",
            "G-1001",
            "G-1003",
        ]
    finally:
        receiver("migrate", "--config", str(kept / "receiver.toml"), cwd=tmp_path)
        shutil.rmtree(kept, ignore_errors=True)


# -- a SIGKILLed serve leaves no embedded PostgreSQL running for ever -----------------------------


def postmaster_pid(data_dir: Path) -> int | None:
    """The embedded server's pid when it runs, else None."""
    try:
        pid = int((data_dir / "pgdata" / "postmaster.pid").read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    return pid


@pytest.mark.slow
def test_after_a_sigkill_of_serve_the_next_clean_exit_stops_the_embedded_database(
    embedded_home: Path,
):
    data_dir = embedded_home / "data"
    killed = ServiceProcess(embedded_home / "json.toml", port=free_port())
    with killed.start():
        killed.wait_ready(60)
        killed.signal(signal.SIGKILL)
        killed.wait(10)
    server = postmaster_pid(data_dir)
    assert server is not None  # left behind by the killed process
    again = ServiceProcess(embedded_home / "json.toml", port=free_port())
    with again.start():
        again.wait_ready(60)
        assert postmaster_pid(data_dir) == server  # reused, not a second server
        assert again.stop() == 0
    deadline = time.monotonic() + 10
    while postmaster_pid(data_dir) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert postmaster_pid(data_dir) is None


def test_the_configuration_reads_only_the_secrets_of_the_sections_asked_for(
    tmp_path: Path, gopay_key_file: Path
):
    data = tomllib.loads(merchants(gopay_key_file, secrets_from_env=True))
    env = {"GOPAY_API_KEY": "g-key"}  # BAOFOO_MD5_KEY not set

    def parse(secrets: set[str] | None) -> Config:
        return parse_config(data, source="f.toml", base=tmp_path, environ=env, secrets=secrets)

    gopay_only = parse({"gopay"})
    assert gopay_only.gopay.merchants[0].api_key == "g-key"
    assert gopay_only.baofoo.merchants[0].md5_key == ""
    assert gopay_only.deferred == (
        DeferredSecret(variable="BAOFOO_MD5_KEY", named_by="baofoo.merchants[0].md5_key_env"),
    )
    assert [d.variable for d in parse(set()).deferred] == ["GOPAY_API_KEY", "BAOFOO_MD5_KEY"]
    with pytest.raises(ConfigError, match="environment variable BAOFOO_MD5_KEY: is not set"):
        parse(None)  # every section's: serve's
