"""Run the `receiver` command as a user does, in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import BAOFOO_MEMBER, BAOFOO_TERMINAL, GOPAY_MCHID
from tests.support.stand_in import API_KEY, merchant_key_file


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`receiver ARGS...` with the test's environment less RECEIVER_*, plus `env`."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_")}
    full_env.update(env or {})
    if args[:1] == ("serve",) and cwd is not None and "--config" not in args:
        without_metrics_listener(cwd)
        with_a_merchant(cwd)
    return subprocess.run(
        [sys.executable, "-m", "receiver.run.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def without_metrics_listener(cwd: Path) -> None:
    """Give the receiver.toml in `cwd` (made if absent) `[metrics] port = 0`, unless it names a
    metrics table: a `serve` under test must not want the default port 9464, which another
    service or test run on this machine may hold, and fail for that instead of what it tests."""
    path = cwd / "receiver.toml"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if "[metrics]" not in text:
        path.write_text(f"{text}\n[metrics]\nport = 0\n", encoding="utf-8")


def with_a_merchant(cwd: Path) -> None:
    """Give the receiver.toml in `cwd` a Baofoo merchant unless it lists one: serve refuses to
    start without a merchant (test_cli_output tests that), and these tests test something else."""
    path = cwd / "receiver.toml"
    text = path.read_text(encoding="utf-8")
    if ".merchants]]" not in text:
        merchant = 'member_id = "100000178"\nterminal_id = "10000001"\nmd5_key = "k-for-tests"'
        path.write_text(f"{text}\n[[baofoo.merchants]]\n{merchant}\n", encoding="utf-8")


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The one line a failing command wrote on stderr (asserting there is exactly one)."""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def config_file(
    tmp_path: Path, url: str, key_file: Path, md5_key: str, *, gateway_url: str = ""
) -> Path:
    """A configuration like an operator's: one merchant per gateway, first query after 60 s,
    order queries to `gateway_url` when given."""
    path = tmp_path / "receiver.toml"
    path.write_text(
        f"""
[database]
url = "{url}"
[reconcile]
first_after_s = 60
timeout_s = 2
[gopay]
api_url = "{gateway_url}"
[[gopay.merchants]]
mchid = "{GOPAY_MCHID}"
platform_public_keys = ["{key_file}"]
private_key = "{merchant_key_file(tmp_path)}"
api_key = "{API_KEY}"
default_channel = "gopay_banktransfer"
[baofoo]
query_url = "{gateway_url and gateway_url + "/order/query"}"
[[baofoo.merchants]]
member_id = "{BAOFOO_MEMBER}"
terminal_id = "{BAOFOO_TERMINAL}"
md5_key = "{md5_key}"
"""
    )
    return path
