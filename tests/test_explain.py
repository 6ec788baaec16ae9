"""`receiver explain --id N`: for notifications received over real HTTP, the command (a real
process, on the test database) says what decided each outcome, with the numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from receiver.gateways.gopay.signing import key_fingerprint, load_public_key
from tests.conftest import BAOFOO_MEMBER, BAOFOO_TERMINAL, GOPAY_MCHID
from tests.support.baofoo_signer import baofoo_fields, encode_form, sign_baofoo
from tests.support.db import database_url
from tests.support.gopay_signer import GoPaySigner, new_rsa_key


def charge(out_trade_no: str, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "mid": int(GOPAY_MCHID),
        "out_trade_no": out_trade_no,
        "in_trade_no": "P" + out_trade_no,
        "amount": "100.000",
        "pay_amount": "100.000",
        "currency": "CNY",
        "status": 2,
    }
    return base | fields


@pytest.fixture
def config_file(tmp_path: Path, migrated: str, gopay_key_file: Path, baofoo_md5_key: str) -> Path:
    path = tmp_path / "receiver.toml"
    path.write_text(
        f"""
[database]
url = "{migrated}"
[log]
level = "warning"
[gopay]
timestamp_tolerance_s = 900
[[gopay.merchants]]
mchid = "{GOPAY_MCHID}"
platform_public_keys = ["{gopay_key_file}"]
[[baofoo.merchants]]
member_id = "{BAOFOO_MEMBER}"
terminal_id = "{BAOFOO_TERMINAL}"
md5_key_env = "EXPLAIN_TEST_MD5"
"""
    )
    return path


def explain(config_file: Path, baofoo_md5_key: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_")}
    env["EXPLAIN_TEST_MD5"] = baofoo_md5_key
    return subprocess.run(
        [sys.executable, "-m", "receiver.run.cli", "explain", "--config", str(config_file), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


async def notify(client: Any, signer: GoPaySigner, ch: dict[str, Any], **kw: Any) -> int:
    body, headers = signer.notify(ch, **kw)
    resp = await client.post("/notify/gopay", data=body, headers=headers)
    return resp.status


async def last_id(db: Any) -> int:
    value: int = await db.fetchval("SELECT max(id) FROM notifications")
    return value


def explained(config_file: Path, md5: str, notification_id: int) -> dict[str, Any]:
    done = explain(config_file, md5, "--id", str(notification_id))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    found: dict[str, Any] = json.loads(done.stdout)
    return found


async def test_explain_applied(client, db, signer, make_order, config_file, baofoo_md5_key):
    await make_order("E1")
    assert await notify(client, signer, charge("E1")) == 200
    found = explained(config_file, baofoo_md5_key, await last_id(db))
    assert found["outcome"] == "applied"
    assert found["would_pass"] is None
    assert found["checks"]["keys_tried"][0]["verified"] is True
    assert found["checks"]["timestamp"]["within"] is True
    assert abs(found["checks"]["timestamp"]["skew_s"]) < 60
    assert found["order"] | {"id": 0} == {
        "id": 0,
        "merchant_id": GOPAY_MCHID,
        "out_trade_no": "E1",
        "amount": "100.00",
        "currency": "CNY",
        "status": "paid",
        "paid_amount": "100.00",
        "amounts_match": True,
    }
    body = await db.fetchval("SELECT body FROM notifications WHERE id = $1", found["id"])
    assert found["received"]["body_bytes"] == len(body)
    assert set(found["received"]["headers"]) >= {"x-ca-signature", "x-ca-timestamp"}


async def test_explain_bad_signature_names_each_key_tried(
    client, db, make_order, config_file, baofoo_md5_key, gopay_key_file
):
    await make_order("E2")
    assert await notify(client, GoPaySigner(new_rsa_key()), charge("E2")) == 401
    found = explained(config_file, baofoo_md5_key, await last_id(db))
    assert found["outcome"] == "bad_signature"
    fingerprint = key_fingerprint(load_public_key(gopay_key_file.read_text()))
    assert found["checks"]["keys_tried"] == [
        {"merchant": GOPAY_MCHID, "key": fingerprint, "variant": "base64", "verified": False},
        {"merchant": GOPAY_MCHID, "key": fingerprint, "variant": "plain", "verified": False},
    ]
    assert fingerprint in found["would_pass"]
    assert len(found["checks"]["signed_text_sha256"]) == 64
    assert "BEGIN" not in json.dumps(found)  # never a key


async def test_explain_expired_gives_the_skew_and_the_tolerance(
    client, db, signer, make_order, config_file, baofoo_md5_key
):
    await make_order("E3")
    sent = str(int((time.time() - 1200) * 1000))
    assert await notify(client, signer, charge("E3"), timestamp=sent) == 401
    found = explained(config_file, baofoo_md5_key, await last_id(db))
    assert found["outcome"] == "expired"
    ts = found["checks"]["timestamp"]
    assert ts["tolerance_s"] == 900 and ts["within"] is False
    assert -1260 < ts["skew_s"] < -1199
    assert "within 900 s" in found["would_pass"]
    assert f"{abs(ts['skew_s'])} s behind" in found["would_pass"]
    assert "behind the service's clock (tolerance 900 s)" in found["detail"]


async def test_explain_unknown_merchant_lists_the_configured_ones(
    client, db, signer, config_file, baofoo_md5_key
):
    assert await notify(client, signer, charge("E4", mid=999999)) == 403
    found = explained(config_file, baofoo_md5_key, await last_id(db))
    assert found["outcome"] == "unknown_merchant"
    assert found["checks"]["merchant_claimed"] == "999999"
    assert found["checks"]["merchants_configured"] == [GOPAY_MCHID]
    assert found["checks"]["merchant_configured"] is False
    assert (
        found["would_pass"]
        == f"merchant 999999 in the gopay configuration (it lists: {GOPAY_MCHID})"
    )


async def test_explain_amount_mismatch_gives_both_amounts(
    client, db, signer, make_order, config_file, baofoo_md5_key
):
    await make_order("E5", amount_minor=10000)
    ch = charge("E5", amount="99.000", pay_amount="99.000")
    assert await notify(client, signer, ch) == 422
    found = explained(config_file, baofoo_md5_key, await last_id(db))
    assert found["outcome"] == "amount_mismatch"
    assert found["notification"]["paid_amount"] == "99.00"
    assert found["order"]["amount"] == "100.00"
    assert found["order"]["status"] == "pending"
    assert found["order"]["amounts_match"] is False
    assert "99.00 CNY" in found["would_pass"] and "100.00 CNY" in found["would_pass"]


async def test_explain_text_is_readable(client, db, signer, config_file, baofoo_md5_key):
    assert await notify(client, signer, charge("E6", mid=999999)) == 403
    done = explain(config_file, baofoo_md5_key, "--id", str(await last_id(db)), "--text")
    assert done.returncode == 0, done.stderr
    assert "outcome: unknown_merchant" in done.stdout
    assert "merchant claimed: 999999" in done.stdout
    assert "would pass: merchant 999999" in done.stdout


async def test_explain_baofoo_bad_signature(client, db, config_file, baofoo_md5_key):
    body = encode_form(sign_baofoo(baofoo_fields(TransID="B1"), "not-the-key-1234"))
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert (await client.post("/notify/baofoo", data=body, headers=form)).status == 401
    found = explained(config_file, baofoo_md5_key, await last_id(db))
    assert found["outcome"] == "bad_signature"
    [tried] = found["checks"]["keys_tried"]
    assert tried["verified"] is False and tried["key"].startswith("sha256:")
    assert baofoo_md5_key not in json.dumps(found)


async def test_explain_an_unknown_id_is_one_line_exit_1(db, config_file, baofoo_md5_key):
    done = explain(config_file, baofoo_md5_key, "--id", "987654")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == "receiver: no stored notification with id 987654\n"


def test_explain_needs_an_id(config_file, baofoo_md5_key):
    done = explain(config_file, baofoo_md5_key, "--id", "x")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1


async def test_explain_never_migrates_an_older_schema(
    tmp_path, migrated, gopay_key_file, baofoo_md5_key
):
    admin = await asyncpg.connect(migrated)
    name = f"explain_empty_{os.getpid()}"
    await admin.execute(f"DROP DATABASE IF EXISTS {name}")
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        empty_url = database_url(migrated, name)
        config = tmp_path / "empty.toml"
        config.write_text(
            f'[database]\nurl = "{empty_url}"\n[[gopay.merchants]]\nmchid = "{GOPAY_MCHID}"\n'
            f'platform_public_keys = ["{gopay_key_file}"]\n'
        )
        done = explain(config, baofoo_md5_key, "--id", "1")
        assert done.returncode == 1
        assert done.stderr == (
            "receiver: the database has no receiver schema:"
            " run `receiver migrate` (or start serve) first\n"
        )
        conn = await asyncpg.connect(empty_url)
        try:
            assert await conn.fetchval("SELECT to_regclass('notifications')") is None
        finally:
            await conn.close()
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name}")
        await admin.close()
