"""No key, signature or MD5 key in logs, error messages or reprs; nonces pruned; accounts masked."""

from __future__ import annotations

import asyncpg
import structlog

from receiver.http.app import build_gateways
from receiver.store.ledger import Ledger
from tests.support.baofoo_signer import baofoo_fields, encode_form, sign_baofoo
from tests.support.gateways import charge
from tests.support.gopay_signer import public_key_text


async def test_reprs_hold_no_secret(config, baofoo_md5_key, gopay_key, signer):
    shown = repr(config) + repr(build_gateways(config)) + repr(signer)
    assert baofoo_md5_key not in shown
    assert public_key_text(gopay_key, "base64").strip()[40:80] not in shown


async def test_logs_of_both_gateways_hold_no_secret_and_mask_accounts(
    client, db, signer, baofoo_md5_key, make_order
):
    await make_order("H1")
    await make_order("H2", provider="baofoo", amount_minor=100)
    account = "6228480415647314871"
    body, headers = signer.notify(charge("H1", extparam={"bankaccount": account}))
    form = sign_baofoo(baofoo_fields(TransID="H2", AdditionalInfo=account), baofoo_md5_key)
    with structlog.testing.capture_logs() as logs:
        await client.post("/notify/gopay", data=body, headers=headers)
        await client.post("/notify/gopay", data=body, headers=headers)  # replayed: refused
        await client.post(
            "/notify/baofoo",
            data=encode_form(form),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        await client.post(
            "/notify/baofoo",
            data=encode_form({**form, "Md5Sign": "f" * 32}),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
    text = repr(logs)
    assert len([e for e in logs if e["event"] == "notification"]) == 4
    for secret in (headers["X-Ca-Signature"], form["Md5Sign"], baofoo_md5_key, account):
        assert secret not in text


async def test_old_nonces_are_pruned_and_recent_ones_kept(db, migrated):
    pool = await asyncpg.create_pool(migrated, min_size=1, max_size=2)
    try:
        await db.execute(
            "INSERT INTO gopay_nonces (nonce, seen_at) VALUES"
            " ('OLD', now() - interval '1 hour'), ('NEW', now())"
        )
        pruned = await Ledger(pool, nonce_window_s=900).prune_nonces()
    finally:
        await pool.close()
    assert pruned == 1
    assert [r["nonce"] for r in await db.fetch("SELECT nonce FROM gopay_nonces")] == ["NEW"]
