"""The gateways' side of a test: build, sign and post a delivery as each gateway does."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp.test_utils import TestClient

from tests.support.baofoo_signer import baofoo_fields, encode_form, sign_baofoo
from tests.support.gopay_signer import GoPaySigner

GOPAY_MCHID = "100001"
SUCCESS = b'{"result_code":"OK","result_msg":"SUCCESS"}'
FAIL = b'{"result_code":"OK","result_msg":"FAIL"}'
FORM = "application/x-www-form-urlencoded"


def charge(out_trade_no: str, **fields: Any) -> dict[str, Any]:
    """A paid GoPay charge of 100.00 CNY as the platform sends it (a field given None: left out)."""
    base: dict[str, Any] = {
        "mid": int(GOPAY_MCHID),
        "out_trade_no": out_trade_no,
        "in_trade_no": "P" + out_trade_no,
        "subject": "VIP充值 - 100",
        "channel": "gopay_banktransfer",
        "amount": "100.000",
        "pay_amount": "100.000",
        "currency": "CNY",
        "notify_url": "https://merchant.example/notify",
        "status": 2,
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


async def post(
    client: TestClient[Any, Any], signer: GoPaySigner, ch: dict[str, Any], **kw: Any
) -> tuple[int, bytes]:
    """Sign `ch` as the GoPay platform does and POST it to /notify/gopay: (status, body)."""
    body, headers = signer.notify(ch, **kw)
    resp = await client.post("/notify/gopay", data=body, headers=headers)
    return resp.status, await resp.read()


async def post_form(
    client: TestClient[Any, Any], fields: dict[str, str], *, charset: str = "utf-8", **headers: str
) -> tuple[int, bytes]:
    """POST a Baofoo form to /notify/baofoo as Baofoo does: (status, body)."""
    content_type = FORM if charset == "utf-8" else f"{FORM}; charset={charset}"
    resp = await client.post(
        "/notify/baofoo",
        data=encode_form(fields, charset=charset),
        headers={"Content-Type": content_type, **headers},
    )
    return resp.status, await resp.read()


@dataclass
class GoPayClient:
    """GoPay's platform, pointed at the application under test."""

    client: TestClient[Any, Any]
    signer: GoPaySigner

    async def pay(self, out_trade_no: str, **fields: Any) -> tuple[int, bytes]:
        """Deliver a signed paid charge (fields override the defaults of `charge`)."""
        return await post(self.client, self.signer, charge(out_trade_no, **fields))

    async def deliver(self, ch: dict[str, Any], **kw: Any) -> tuple[int, bytes]:
        """Deliver this charge, signed (`kw` goes to the signer: nonce, timestamp, key...)."""
        return await post(self.client, self.signer, ch, **kw)


@dataclass
class BaofooClient:
    """Baofoo's gateway, pointed at the application under test."""

    client: TestClient[Any, Any]
    md5_key: str

    def fields(self, trans_id: str, **overrides: str) -> dict[str, str]:
        """A signed form for `trans_id` (a paid notification unless overridden)."""
        return sign_baofoo(baofoo_fields(TransID=trans_id, **overrides), self.md5_key)

    async def post(
        self, fields: dict[str, str], *, charset: str = "utf-8", **headers: str
    ) -> tuple[int, bytes]:
        """POST a form as Baofoo does: (status, body)."""
        return await post_form(self.client, fields, charset=charset, **headers)

    async def pay(self, trans_id: str, **overrides: str) -> tuple[int, bytes]:
        """Deliver a signed paid notification for `trans_id`."""
        return await self.post(self.fields(trans_id, **overrides))
