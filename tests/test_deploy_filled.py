"""The deploy files, filled in, run the whole product: the CronJob's own command reconciles
against a stand-in gateway on a socket, and deploy/check.sh passes a filled-in copy and reports
any placeholder left in."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.stand_in import API_KEY, merchant_key_file, start_stand_in

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
GOPAY_API = "https://CHANGE-ME-gopay-api.example"
BAOFOO_QUERY = "https://CHANGE-ME-baofoo-query.example/order/query"
SHOP_URL = "https://CHANGE-ME-shop.example/hooks/payments"
KEYS = "/etc/receiver/keys/"
WEBHOOK_SECRET = "whsec_dGVzdC13ZWJob29rLXNlY3JldC1vZi0zMi1ieXRlcyEh"


def _configmap_toml() -> str:
    doc = yaml.safe_load((DEPLOY / "k8s" / "configmap.yaml").read_text(encoding="utf-8"))
    text: str = doc["data"]["receiver.toml"]
    return text


def _cron_container() -> dict[str, Any]:
    job = yaml.safe_load((DEPLOY / "k8s" / "cronjob.yaml").read_text(encoding="utf-8"))
    container: dict[str, Any] = job["spec"]["jobTemplate"]["spec"]["template"]["spec"][
        "containers"
    ][0]
    return container


async def test_the_cronjob_command_reconciles_against_a_stand_in_gateway(
    aiohttp_server, db, make_order, gopay_key, gopay_key_file, baofoo_md5_key, migrated, tmp_path
):
    stand_in = await start_stand_in(aiohttp_server, platform_key=gopay_key, md5_key=baofoo_md5_key)
    text = (
        _configmap_toml()
        .replace(GOPAY_API, stand_in.base_url)
        .replace(BAOFOO_QUERY, f"{stand_in.base_url}/order/query")
        .replace(SHOP_URL, "http://127.0.0.1:9/hooks/payments")
        .replace(KEYS + "gopay-100001-platform.pem", str(gopay_key_file))
        .replace(KEYS + "gopay-100001-merchant.pem", str(merchant_key_file(tmp_path)))
    )
    assert "CHANGE-ME" not in text
    config_file = tmp_path / "receiver.toml"
    config_file.write_text(text, encoding="utf-8")
    config = tomllib.loads(config_file.read_text(encoding="utf-8"))
    assert config["gopay"]["merchants"][0]["mchid"] == "100001"  # the test merchants' ids

    for out_trade_no, provider, channel in (
        ("CJ1", "gopay", "gopay_banktransfer"),
        ("CJ2", "baofoo", None),
    ):
        await make_order(out_trade_no, provider=provider, channel=channel)
        stand_in.pay(provider, out_trade_no)
    await db.execute("UPDATE orders SET created_at = now() - interval '10 minutes'")

    container = _cron_container()
    command = container["command"]
    assert command[:2] == ["receiver", "reconcile"]
    argv = [str(Path(sys.executable).parent / "receiver"), *command[1:]]
    argv[argv.index("/etc/receiver/receiver.toml")] = str(config_file)
    variables = {e["name"] for e in container["env"]}
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_")}
    given = {
        "RECEIVER_DATABASE_URL": migrated,
        "BAOFOO_MD5_KEY": baofoo_md5_key,
        "GOPAY_API_KEY": API_KEY,
        "SHOP_WEBHOOK_SECRET": WEBHOOK_SECRET,
    }
    assert variables == given.keys()  # the Secret's variables are what the command needs
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=env | given,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()
    assert b"Traceback" not in stderr
    lines = [json.loads(line) for line in stdout.decode().splitlines()]
    # The gateways are asked side by side: their lines come in either order.
    assert sorted((line["out_trade_no"], line["outcome"]) for line in lines) == [
        ("CJ1", "applied"),
        ("CJ2", "applied"),
    ]
    statuses = await db.fetch("SELECT out_trade_no, status FROM orders ORDER BY out_trade_no")
    assert [(r["out_trade_no"], r["status"]) for r in statuses] == [
        ("CJ1", "paid"),
        ("CJ2", "paid"),
    ]


def _filled_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy)
    k8s = sorted((copy / "k8s").glob("*.yaml"))
    for path in [copy / "receiver.toml.example", copy / "docker-compose.yml", *k8s]:
        text = (
            path.read_text(encoding="utf-8")
            .replace(GOPAY_API, "https://pay.gopay.example.com")
            .replace(BAOFOO_QUERY, "https://gw.baofoo.example.com/order/query")
            .replace(SHOP_URL, "https://shop.internal/hooks/payments")
            .replace("whsec_CHANGE-ME-PLACEHOLDER", WEBHOOK_SECRET)
            .replace("CHANGE-ME-PLACEHOLDER", "filled-in-value")
        )
        path.write_text(text, encoding="utf-8")
    return copy


def _line_of(path: Path, text: str) -> int:
    lines = path.read_text(encoding="utf-8").splitlines()
    return next(n for n, line in enumerate(lines, 1) if text in line)


def _check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(DEPLOY / "check.sh"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.slow
def test_check_passes_a_filled_in_copy_and_reports_a_placeholder_left_in(tmp_path):
    copy = _filled_copy(tmp_path)
    done = _check("--filled", str(copy))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok   no placeholder left in" in done.stdout

    configmap = copy / "k8s" / "configmap.yaml"
    text = configmap.read_text(encoding="utf-8")
    configmap.write_text(text.replace("https://pay.gopay.example.com", GOPAY_API))
    done = _check("--filled", str(copy))
    assert done.returncode == 1
    line = _line_of(configmap, GOPAY_API)
    assert f'BAD  placeholder left in: k8s/configmap.yaml:{line}: api_url = "{GOPAY_API}"' in (
        done.stdout
    )


@pytest.mark.slow
def test_check_lists_the_templates_placeholders():
    done = _check()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "placeholders to fill in" in done.stdout
    line = _line_of(DEPLOY / "receiver.toml.example", GOPAY_API)
    assert f'receiver.toml.example:{line}: api_url = "{GOPAY_API}"' in done.stdout
    assert "apt-get install" not in done.stdout.replace("(apt-get install", "")


def test_check_installs_nothing():
    script = (DEPLOY / "check.sh").read_text(encoding="utf-8")
    assert "apt-get install -y" not in script and "apt_install" not in script
    ci = (DEPLOY.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert ci.index("nginx-light prometheus") < ci.index("bash deploy/check.sh")
