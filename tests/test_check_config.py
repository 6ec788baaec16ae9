"""`receiver check-config` and `receiver --version`, run as real processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from receiver.config import DatabaseConfig
from receiver.run.observe import describe_database, version
from tests.support.cli import one_line, run
from tests.support.service_process import write_config


def test_version_prints_the_package_version():
    proc = run("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"receiver {version()}\n"


def test_check_config_prints_what_would_run_without_secrets(gopay_key_file: Path, tmp_path: Path):
    config = write_config(
        tmp_path / "receiver.toml",
        gopay_key_file=gopay_key_file,
        metrics={"host": "0.0.0.0", "port": 9100},
        reconcile={"enabled": True},
        baofoo={"query_url": "https://gw.example.com/order/query"},
    )
    with config.open("a") as f:
        f.write('[[baofoo.merchants]]\nmember_id = "100000178"\nterminal_id = "10000001"\n')
        f.write('md5_key_env = "MD5_SECRET"\n')
    env = {
        "RECEIVER_DATABASE_URL": "postgresql://receiver:s3cret-pw@db.internal:6432/payments",
        "MD5_SECRET": "k3y-material-xyz",
    }
    proc = run("check-config", "--config", str(config), env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "s3cret-pw" not in proc.stdout and "k3y-material-xyz" not in proc.stdout
    shown = json.loads(proc.stdout)
    assert shown["database"] == {"host": "db.internal", "port": 6432, "name": "payments"}
    assert shown["merchants"] == {"gopay": ["100001"], "baofoo": ["100000178/10000001"]}
    assert shown["reconciler"] is True
    assert shown["metrics"] == "0.0.0.0:9100"
    assert shown["server"] == {"host": "127.0.0.1", "port": 8080, "tls": False}
    assert shown["version"] == version()
    assert "warning" not in shown


def test_check_config_warns_of_an_embedded_database(tmp_path: Path, gopay_key_file: Path):
    config = write_config(
        tmp_path / "receiver.toml", gopay_key_file=gopay_key_file, database={"data_dir": "pg"}
    )
    proc = run("check-config", "--config", str(config), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert shown["database"] == {"embedded": True, "data_dir": str((tmp_path / "pg").resolve())}
    assert "embedded" in shown["warning"]
    assert shown["metrics"] == "off"  # write_config turns the listener off unless told


def test_check_config_exits_2_naming_an_unreadable_key_file(tmp_path: Path):
    config = write_config(tmp_path / "receiver.toml", gopay_key_file=tmp_path / "absent.pem")
    proc = run("check-config", "--config", str(config), cwd=tmp_path)
    assert proc.returncode == 2
    line = one_line(proc)
    assert line.startswith("receiver: configuration error: ")
    assert "gopay.merchants[0].platform_public_keys[0]" in line
    assert proc.stdout == ""


def test_check_config_loads_the_order_query_keys_too(gopay_key_file: Path, tmp_path: Path):
    config = write_config(
        tmp_path / "receiver.toml",
        gopay_key_file=gopay_key_file,
        gopay={"api_url": "https://pay.example.com"},
    )
    with config.open("a") as f:
        f.write(f'private_key = "{tmp_path / "absent-merchant.pem"}"\n')
    proc = run("check-config", "--config", str(config), cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout
    assert "gopay.merchants[0].private_key" in one_line(proc)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql://receiver:pw@db.internal:6432/payments?sslmode=require",
            {"host": "db.internal", "port": 6432, "name": "payments"},
        ),
        (
            "postgresql://postgres:@/postgres?host=/tmp/pg-socket",
            {"host": "/tmp/pg-socket", "port": 5432, "name": "postgres"},
        ),
        ("postgresql://u:pw@[::1]/db", {"host": "::1", "port": 5432, "name": "db"}),
        ("postgresql://u:pw@[::1]:5433/db", {"host": "::1", "port": 5433, "name": "db"}),
        (
            "postgresql://receiver@db.internal/rx",
            {"host": "db.internal", "port": 5432, "name": "rx"},
        ),
        ("postgresql://u:pw@h:notaport/db", {"host": "h", "port": "notaport", "name": "db"}),
    ],
)
def test_the_database_is_named_by_host_port_and_name_never_the_password(url, shown):
    assert describe_database(DatabaseConfig(url=url)) == shown
