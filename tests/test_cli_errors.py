"""Operators' errors, through the real `receiver` process: each ends with exit 2 (bad usage or
configuration) or 1 (failure) and ONE line on stderr, never a traceback."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from receiver.config import DatabaseConfig
from receiver.errors import NoEmbeddedDatabase
from receiver.store import database
from tests.conftest import BAOFOO_MEMBER, BAOFOO_TERMINAL, GOPAY_MCHID
from tests.support.cli import one_line, run, with_a_merchant, without_metrics_listener
from tests.support.service_process import free_port

pytestmark = pytest.mark.usefixtures("db")

ORDER_KEY = ("--provider", "gopay", "--merchant", GOPAY_MCHID, "--out-trade-no", "OPS-1")


def expect(proc: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """The one stderr line of a process that exited with `code`, holding every one of `words`."""
    assert "Traceback" not in f"{proc.stderr}{proc.stdout or ''}", proc.stderr
    assert proc.returncode == code, proc.stderr
    line = one_line(proc)
    assert line.startswith("receiver: ")
    for word in words:
        assert word in line
    return line


@pytest.fixture
def merchants_config(tmp_path: Path, gopay_key_file: Path) -> Path:
    """receiver.toml in tmp_path (the commands' working directory): one merchant per gateway."""
    path = tmp_path / "receiver.toml"
    path.write_text(
        "[[gopay.merchants]]\n"
        f'mchid = "{GOPAY_MCHID}"\n'
        f'platform_public_keys = ["{gopay_key_file}"]\n'
        "[[baofoo.merchants]]\n"
        f'member_id = "{BAOFOO_MEMBER}"\n'
        f'terminal_id = "{BAOFOO_TERMINAL}"\n'
        'md5_key = "0123456789abcdef"\n'
    )
    return path


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port somebody else listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


# -- serve: where it listens ---------------------------------------------------------------------


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_on_a_port_in_use_exits_1_with_one_line(migrated, tmp_path, busy_port, workers):
    proc = run(
        *("serve", "--host", "127.0.0.1", "--port", str(busy_port), "--workers", workers),
        env={"RECEIVER_DATABASE_URL": migrated},
        cwd=tmp_path,
    )
    expect(proc, 1, f"cannot listen on 127.0.0.1:{busy_port}", "in use")


@pytest.mark.parametrize("port", ["99999", "-1", "eighty"])
def test_serve_refuses_a_port_that_is_no_port_number(tmp_path, port):
    expect(run("serve", "--port", port, cwd=tmp_path), 2, "usage:", "--port", port)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_unknown_host_on_the_command_line_exits_2_naming_the_option(
    migrated, tmp_path, workers
):
    proc = run(
        *("serve", "--host", "no-such-host.invalid", "--port", "0", "--workers", workers),
        env={"RECEIVER_DATABASE_URL": migrated},
        cwd=tmp_path,
    )
    expect(proc, 2, "usage: --host", "no-such-host.invalid", "not a known host")


def test_serve_unknown_host_in_the_file_exits_2_naming_file_and_key(migrated, tmp_path):
    path = tmp_path / "receiver.toml"
    path.write_text('[server]\nhost = "no-such-host.invalid"\nport = 0\n')
    proc = run("serve", env={"RECEIVER_DATABASE_URL": migrated}, cwd=tmp_path)
    expect(proc, 2, "configuration error", f"{path.name}: server.host", "no-such-host.invalid")


def test_serve_refuses_zero_workers(tmp_path):
    expect(run("serve", "--workers", "0", cwd=tmp_path), 2, "usage:", "--workers")


# -- the database: missing, or refusing the role -------------------------------------------------


def _url_with(url: str, *, user: str = "", dbname: str = "", setting: str = "") -> str:
    scheme, rest = url.split("://", 1)
    auth, _, host_and_path = rest.rpartition("@")
    host, _, path = host_and_path.partition("/")
    name, _, query = path.partition("?")
    query = "&".join(q for q in (query, setting) if q)
    return f"{scheme}://{user or auth}@{host}/{dbname or name}{'?' + query if query else ''}"


DATABASE_COMMANDS = [
    ("migrate",),
    ("orders", "show", *ORDER_KEY),
    ("orders", "add", *ORDER_KEY, "--amount", "1.00"),
    ("serve", "--port", "0"),
    ("serve", "--port", "0", "--workers", "2"),
]


@pytest.mark.usefixtures("merchants_config")
@pytest.mark.parametrize(
    "command", DATABASE_COMMANDS, ids=["migrate", "show", "add", "serve", "serve-2-workers"]
)
@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"user": "nosuchrole"}, 'role "nosuchrole" does not exist'),
        ({"dbname": "nosuchdb"}, 'database "nosuchdb" does not exist'),
        ({"setting": "no_such_setting=1"}, "unrecognized configuration parameter"),
    ],
    ids=["role", "database", "setting"],
)
def test_a_database_that_refuses_the_url_ends_the_command_at_once(
    migrated, tmp_path, command, change, named
):
    url = _url_with(migrated, **change)
    started = time.monotonic()
    proc = run(*command, env={"RECEIVER_DATABASE_URL": url}, cwd=tmp_path)
    expect(proc, 1, "database refused the connection", named)
    assert time.monotonic() - started < 20  # not the 30 s start-up wait of an unreachable one


# -- a closed pipe -------------------------------------------------------------------------------


@pytest.mark.usefixtures("merchants_config")
async def test_orders_add_into_a_closed_pipe_exits_1_with_one_line_and_keeps_the_order(
    migrated, tmp_path, db
):
    read_end, write_end = os.pipe()
    os.close(read_end)  # as `| head -c 1` does once it has its byte
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_")}
    try:
        proc = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "receiver.run.cli",
                "orders",
                "add",
                *ORDER_KEY,
                "--amount",
                "1",
            ],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=env | {"RECEIVER_DATABASE_URL": migrated},
            cwd=tmp_path,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    line = expect(proc, 1, "standard output was closed")
    assert "Exception ignored" not in proc.stderr and "BrokenPipe" not in line
    assert await db.fetchval("SELECT count(*) FROM orders WHERE out_trade_no = 'OPS-1'") == 1


@pytest.mark.usefixtures("merchants_config")
def test_orders_add_piped_into_head_prints_no_traceback(migrated, tmp_path):
    """The shell's own pipeline: whether head has gone before the write is up to the scheduler,
    so either outcome is allowed, but never more than one line on stderr."""
    command = " ".join([sys.executable, "-m", "receiver.run.cli", "orders", "add", *ORDER_KEY])
    proc = subprocess.run(
        ["sh", "-c", f"{command} --amount 1 | head -c 1"],
        capture_output=True,
        text=True,
        env=os.environ | {"RECEIVER_DATABASE_URL": migrated},
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert proc.stdout == "{"
    assert len(proc.stderr.splitlines()) <= 1 and "Traceback" not in proc.stderr, proc.stderr


def test_a_command_started_with_stdout_closed_does_its_work(migrated, tmp_path):
    proc = subprocess.run(
        ["sh", "-c", 'exec "$0" -m receiver.run.cli migrate >&-', sys.executable],
        capture_output=True,
        text=True,
        env=os.environ | {"RECEIVER_DATABASE_URL": migrated},
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert (proc.returncode, proc.stderr) == (0, "")


def test_serve_with_its_log_pipe_closed_keeps_serving_and_says_so_once(migrated, tmp_path):
    read_end, write_end = os.pipe()
    os.close(read_end)  # journald restarted, or `receiver serve | head`
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_")}
    without_metrics_listener(tmp_path)
    with_a_merchant(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "receiver.run.cli", "serve", "--port", str(port)],
        stdout=write_end,
        stderr=subprocess.PIPE,
        text=True,
        env=env | {"RECEIVER_DATABASE_URL": migrated},
        cwd=tmp_path,
    )
    os.close(write_end)
    try:
        assert _healthz_answers(f"http://127.0.0.1:{port}/healthz", within_s=30)
        assert _healthz_answers(f"http://127.0.0.1:{port}/healthz", within_s=1)  # logged again
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert stderr.splitlines() == ["receiver: log lines are being dropped: stdout: Broken pipe"]


def _healthz_answers(url: str, *, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as reply:
                return bool(reply.status == 200)
        except OSError:
            time.sleep(0.1)
    return False


# -- values from the environment name the variable -----------------------------------------------


def test_a_bad_database_url_in_the_environment_names_the_variable_not_the_file(tmp_path):
    (tmp_path / "receiver.toml").write_text('[database]\nurl = "postgresql://x@h/db"\n')
    proc = run("migrate", env={"RECEIVER_DATABASE_URL": "mysql://x@h/db"}, cwd=tmp_path)
    assert expect(proc, 2) == (
        "receiver: configuration error: environment variable RECEIVER_DATABASE_URL:"
        " must start with postgresql://"
    )


def test_a_bad_database_url_in_the_file_names_the_file_and_key(tmp_path):
    path = tmp_path / "receiver.toml"
    path.write_text('[database]\nurl = "mysql://x@h/db"\n')
    proc = run("migrate", cwd=tmp_path)
    expect(proc, 2, f"{path.name}: database.url: must start with postgresql://")


BAOFOO_ENV = (
    f'[[baofoo.merchants]]\nmember_id = "{BAOFOO_MEMBER}"\nterminal_id = "{BAOFOO_TERMINAL}"\n'
    'md5_key_env = "OPS_MD5_KEY"\n'
)
GOPAY_ENV = (
    f'[[gopay.merchants]]\nmchid = "{GOPAY_MCHID}"\nplatform_public_keys = ["k.pem"]\n'
    'api_key_env = "OPS_API_KEY"\n'
)


@pytest.mark.parametrize(
    ("toml", "env", "expected"),
    [
        (BAOFOO_ENV, {}, "environment variable OPS_MD5_KEY: is not set"),
        (BAOFOO_ENV, {"OPS_MD5_KEY": ""}, "environment variable OPS_MD5_KEY: is empty"),
        (
            BAOFOO_ENV,
            {"OPS_MD5_KEY": "secret-md5\n"},
            "environment variable OPS_MD5_KEY: has leading or trailing white space",
        ),
        (
            GOPAY_ENV,
            {"OPS_API_KEY": "secret\x01api"},
            "environment variable OPS_API_KEY: contains a control character",
        ),
    ],
    ids=["unset", "empty", "newline", "control"],
)
def test_a_bad_env_secret_names_the_variable_and_the_key_not_the_file(
    tmp_path, toml, env, expected
):
    (tmp_path / "receiver.toml").write_text(toml)
    proc = run("serve", "--port", "0", env=env, cwd=tmp_path)  # serve reads every secret
    line = expect(proc, 2, "configuration error:", expected)
    assert "names it)" in line and "receiver.toml" not in line and "secret" not in line


def test_an_inline_secret_with_a_newline_names_the_file_and_key(tmp_path):
    path = tmp_path / "receiver.toml"
    path.write_text(BAOFOO_ENV.replace('md5_key_env = "OPS_MD5_KEY"', 'md5_key = "k\\n"'))
    proc = run("migrate", cwd=tmp_path)
    expect(proc, 2, f"{path.name}: baofoo.merchants[0].md5_key: has leading or trailing white")


# -- orders add refuses what no notification could pay -------------------------------------------


@pytest.mark.usefixtures("merchants_config")
@pytest.mark.parametrize(
    ("change", "words"),
    [
        (("--out-trade-no", ""), ("--out-trade-no", "128 printable")),
        (("--out-trade-no", "A\x01B"), ("--out-trade-no", "128 printable")),
        (("--out-trade-no", "N" * 129), ("--out-trade-no", "128 printable")),
        (("--merchant", "999999"), ("--merchant '999999'", "gopay", GOPAY_MCHID)),
        (("--provider", "baofoo"), (f"--merchant '{GOPAY_MCHID}'", "baofoo", BAOFOO_MEMBER)),
        (("--currency", "cny"), ("--currency 'cny'", "3 upper-case letters")),
        (("--currency", "CNYX"), ("--currency 'CNYX'", "3 upper-case letters")),
    ],
    ids=["empty", "control", "129", "gopay-merchant", "baofoo-merchant", "lower", "four"],
)
async def test_orders_add_refuses_an_order_no_notification_could_pay(
    migrated, tmp_path, db, change, words
):
    args = dict(zip(ORDER_KEY[::2], ORDER_KEY[1::2], strict=True)) | {"--currency": "CNY"}
    args[change[0]] = change[1]
    flat = [item for pair in args.items() for item in pair]
    proc = run(
        *("orders", "add", *flat, "--amount", "1.00"),
        env={"RECEIVER_DATABASE_URL": migrated},
        cwd=tmp_path,
    )
    expect(proc, 2, "usage:", *words)
    assert await db.fetchval("SELECT count(*) FROM orders") == 0


@pytest.mark.usefixtures("merchants_config")
def test_orders_add_takes_the_longest_key_the_notify_path_takes(migrated, tmp_path):
    key = ("--provider", "baofoo", "--merchant", BAOFOO_MEMBER, "--out-trade-no", "N" * 128)
    proc = run(
        *("orders", "add", *key, "--amount", "1.00"),
        env={"RECEIVER_DATABASE_URL": migrated},
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr


# -- only serve, migrate and demo create an embedded database -----------------------------------


@pytest.mark.usefixtures("merchants_config")
@pytest.mark.parametrize(
    "command",
    [
        ("orders", "add", *ORDER_KEY, "--amount", "1.00"),
        ("orders", "show", *ORDER_KEY),
        ("orders", "list"),
        ("orders", "resolve", "--review", "1", "--note", "checked"),
        ("notifications", "list"),
        ("replay", "--outcome", "bad_signature"),
    ],
    ids=["orders-add", "orders-show", "orders-list", "orders-resolve", "notifications", "replay"],
)
def test_other_commands_create_no_embedded_database_and_say_where_they_looked(tmp_path, command):
    proc = run(*command, cwd=tmp_path)
    pgdata = tmp_path.resolve() / ".receiver" / "pgdata"
    expect(proc, 1, f"no embedded database at {pgdata}", "RECEIVER_DATABASE_URL")
    assert not (tmp_path / ".receiver").exists()


async def test_database_url_creates_no_embedded_database_unless_asked(tmp_path):
    """The default every command inherits; serve, migrate and demo ask for `create`."""
    with pytest.raises(NoEmbeddedDatabase, match=str(tmp_path / "d" / "pgdata")):
        async with database.database_url(DatabaseConfig(data_dir=tmp_path / "d")):
            pass
    assert not (tmp_path / "d").exists()


@pytest.mark.slow
def test_orders_from_another_folder_use_the_embedded_database_migrate_made(tmp_path):
    # Not under tmp_path: the embedded server runs as its own user when the tests run as root.
    home = Path(tempfile.mkdtemp(prefix="receiver-ops-"))
    try:
        config = home / "receiver.toml"
        config.write_text(
            f'[database]\ndata_dir = "data"\n[[gopay.merchants]]\nmchid = "{GOPAY_MCHID}"\n'
            'platform_public_keys = ["k.pem"]\n'
        )
        assert run("migrate", cwd=home).returncode == 0
        with_config = ("--config", str(config), *ORDER_KEY)
        added = run("orders", "add", *with_config, "--amount", "1", cwd=tmp_path)
        assert added.returncode == 0, added.stderr
        shown = run("orders", "show", *with_config, cwd=tmp_path)
        assert shown.returncode == 0 and '"OPS-1"' in shown.stdout, shown.stderr
        assert not (tmp_path / ".receiver").exists()
    finally:
        shutil.rmtree(home, ignore_errors=True)


# -- files: configuration, keys, TLS, data directory ---------------------------------------------


def test_a_configuration_file_that_is_a_directory_exits_2(tmp_path):
    (tmp_path / "conf.d").mkdir()
    proc = run("migrate", "--config", str(tmp_path / "conf.d"), cwd=tmp_path)
    expect(proc, 2, "configuration error", "conf.d", "Is a directory")


def test_a_configuration_file_that_is_not_there_exits_2(tmp_path):
    proc = run("migrate", "--config", str(tmp_path / "nowhere.toml"), cwd=tmp_path)
    expect(proc, 2, "configuration error", "nowhere.toml", "No such file")


def test_a_configuration_file_named_by_the_environment_that_is_not_there_names_the_variable(
    tmp_path,
):
    absent = tmp_path / "absent.toml"
    proc = run("migrate", env={"RECEIVER_CONFIG": str(absent)}, cwd=tmp_path)
    assert expect(proc, 2) == (
        "receiver: configuration error: environment variable RECEIVER_CONFIG:"
        f" {absent}: No such file or directory"
    )


def test_a_key_file_that_is_a_directory_exits_2(migrated, tmp_path):
    (tmp_path / "keys").mkdir()
    (tmp_path / "receiver.toml").write_text(
        f'[[gopay.merchants]]\nmchid = "{GOPAY_MCHID}"\nplatform_public_keys = ["keys"]\n'
    )
    proc = run("serve", "--port", "0", env={"RECEIVER_DATABASE_URL": migrated}, cwd=tmp_path)
    expect(proc, 2, "gopay.merchants[0].platform_public_keys[0]", "Is a directory")


def _key_without_permission(key: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    key.write_text("-----BEGIN PUBLIC KEY-----\n")
    key.chmod(0)


def _key_under_a_file(key: Path) -> None:
    key.parent.rmdir()
    key.parent.write_text("not a folder\n")


@pytest.mark.parametrize(
    ("make_unreadable", "problem"),
    [
        (_key_without_permission, "Permission denied"),
        (lambda key: key.symlink_to(key.parent / "gone.pem"), "No such file"),
        (_key_under_a_file, "Not a directory"),
    ],
    ids=["mode-000", "dangling-symlink", "folder-is-a-file"],
)
def test_a_key_file_that_cannot_be_read_exits_2(migrated, tmp_path, make_unreadable, problem):
    (tmp_path / "keys").mkdir()
    make_unreadable(tmp_path / "keys" / "key.pem")
    (tmp_path / "receiver.toml").write_text(
        f'[[gopay.merchants]]\nmchid = "{GOPAY_MCHID}"\nplatform_public_keys = ["keys/key.pem"]\n'
    )
    proc = run("serve", "--port", "0", env={"RECEIVER_DATABASE_URL": migrated}, cwd=tmp_path)
    expect(proc, 2, "platform_public_keys[0]", "keys/key.pem", problem)


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize(
    ("content", "words"),
    [(None, ("No such file",)), (b"not a certificate", ("not a matching PEM",))],
    ids=["missing", "garbage"],
)
def test_tls_files_that_are_missing_or_not_pem_exit_2(migrated, tmp_path, content, words, workers):
    if content is not None:
        (tmp_path / "tls.pem").write_bytes(content)
    (tmp_path / "receiver.toml").write_text(
        '[server]\ntls_cert = "tls.pem"\ntls_key = "tls.pem"\nport = 0\n'
    )
    proc = run("serve", "--workers", workers, env={"RECEIVER_DATABASE_URL": migrated}, cwd=tmp_path)
    line = expect(proc, 2, "receiver.toml: server.tls_cert", *words)
    assert "[SSL]" not in line


@pytest.mark.parametrize(
    "command",
    [("migrate",), ("serve", "--port", "0"), ("serve", "--port", "0", "--workers", "2")],
    ids=" ".join,
)
def test_a_data_dir_that_is_a_file_exits_1_naming_it(tmp_path, command):
    (tmp_path / "data").write_text("a file\n")
    (tmp_path / "receiver.toml").write_text('[database]\ndata_dir = "data"\n')
    proc = run(*command, cwd=tmp_path)
    expect(proc, 1, "embedded database at", "did not start", str(tmp_path / "data"))


def test_an_embedded_database_that_initdb_refuses_is_one_line_with_its_reason(tmp_path):
    (tmp_path / "data" / "pgdata").mkdir(parents=True)
    (tmp_path / "data" / "pgdata" / "stray.txt").write_text("not a database\n")
    (tmp_path / "receiver.toml").write_text('[database]\ndata_dir = "data"\n')
    proc = run("migrate", cwd=tmp_path)
    expect(proc, 1, "embedded database at", "did not start", "exists but is not empty")
