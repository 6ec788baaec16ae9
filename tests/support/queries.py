"""Order-query fixtures shared by the query tests: GoPay's published signing vectors (made with
openssl and PHP, independently of this project) and Baofoo's signed replies."""

from __future__ import annotations

import hashlib
from pathlib import Path

from receiver.gateways import OrderRef
from receiver.gateways.gopay.query import GoPayQuerier, QueryAccount
from receiver.gateways.gopay.signing import load_private_key, load_public_key

VECTORS = Path(__file__).resolve().parent / "vectors"


VECTOR_MCHID = "100001"


VECTOR_ORDER = "202007040118131586193493"


VECTOR_REQUEST_BODY = (
    b'{"mchid":"100001","out_trade_no":"202007040118131586193493","channel":"gopay_banktransfer"}'
)


VECTOR_REQUEST_SIGNATURE = (
    "Ur6SZYR0Ltbbd/YTUV8ZJbjznN9FrsgrOW5cTwbVltM2Hy+wck9yxlYieXS9LzOwRx1rQDJ5ny5NazJfvHGrNkDHK5eN"
    "05khnqyQXI0ZPtgy4oXwemxKroHw7OGsflylJBiP5Z0XH9OEeJSQcNtA+PuWh+hYCEOGOyAR8PKIZTfMcecEpIwcdGMi"
    "FWvPEeIIdT8bFJUJMMPLLCrnMukTPpFbK3Kl5l3vwrJspDAXDMZnjbpul1GAHEg1+4gbNIxw6PufgOmSZPo0ZjmV4Fr6"
    "zdaLjldcMY/11YJ1JITomvzc27FvPx8tVDOYlJAGbQPC8wYk3MZjfmv5p4R6WR5Hjw=="
)


VECTOR_CHARGE = (
    b'{"trade_no":"C2020040701181440794","out_trade_no":"202007040118131586193493",'
    b'"subject":"VIP\\u5145\\u503c - 100001","body":"VIP\\u5145\\u503c - 100001",'
    b'"extparam":"[]","amount":"1.660","channel":"gopay_banktransfer","currency":"CNY",'
    b'"client_ip":"127.0.0.1","status":"2"}'
)


VECTOR_REPLY_BODY = b'{"result_code":"OK","result_msg":"SUCCESS","charge":' + VECTOR_CHARGE + b"}"


VECTOR_REPLY_HEADERS = {
    "x-ca-noncestr": "5D2F0C3A9B8E4F6A1C7D2E3F4A5B6C7D",
    "x-ca-timestamp": "1.58600995149E+12",
    "x-ca-signature": (
        "hcap0PRS4C6ibPSUrDvl7ytv5WGC8jpfyvO9KqejcyYmdwtFrrwE6G90FPGOOKsx4pZafost8Tz68xciQFKyisgA"
        "ggHnFBubxQhBP/wACMu+Rn0GhGC8UV6dAoaAbuwIN2izU7h5WjLx5tsM0FJZmYcCZ7BJmWUa//uPexTZBn9AM3Sq"
        "OkD7UDjJdb54BqznS1JMc/VpYkOy0F1J8XpX78i1SZlE3ampdqPSne7z7U8+o+eOsDISMsduuwI0im0i0WIOijRj"
        "Cp8oCka1oJme0Zaw7xg6+CZ3RlbT8uVqFI4WweEgdABnq8TfKU+yB7QpnEFluGfnMtrboe9+aF7wrA=="
    ),
    "content-length": "999",  # not a signature header: not kept with the reply
}


def _order(**overrides: object) -> OrderRef:
    fields: dict[str, object] = {
        "order_id": 1,
        "provider": "gopay",
        "merchant_id": VECTOR_MCHID,
        "out_trade_no": VECTOR_ORDER,
        "amount_minor": 166,
        "currency": "CNY",
        "channel": "gopay_banktransfer",
    }
    fields.update(overrides)
    return OrderRef(**fields)


def _vector_key(name: str) -> str:
    return (VECTORS / name).read_text()


def _querier(
    *,
    default_channel: str = "",
    api_key: str = "the-api-key",
    api_url: str = "https://pay.example.com/",
) -> GoPayQuerier:
    account = QueryAccount(
        mchid=VECTOR_MCHID,
        private_key=load_private_key(_vector_key("gopay-test-merchant-private.pem")),
        api_key=api_key,
        platform_keys=(load_public_key(_vector_key("gopay-test-platform-public.pem")),),
        default_channel=default_channel,
    )
    return GoPayQuerier(
        api_url=api_url,
        accounts={VECTOR_MCHID: account},
        nonce=lambda: "C8E1D385785625AFD64A484B58F91882",
        clock_ms=lambda: "1586007620038",
    )


# --- Baofoo ---

MEMBER, TERMINAL, MD5_KEY = "100000178", "10000001", "abcdefg"


TRANS = "2014010101010101"


SUCC_TIME = "20141029184503"  # China time: 10:45:03 UTC


def signed_reply(
    check: str = "Y",
    *,
    money: str = "12345",
    trans_id: str = TRANS,
    terminal_id: str = TERMINAL,
    md5_key: str = MD5_KEY,
) -> bytes:
    """A reply signed as PROTOCOL.md says: MD5 of the six parts and the key, `|`-joined."""
    parts = [MEMBER, terminal_id, trans_id, check, money, SUCC_TIME]
    sign = hashlib.md5("|".join([*parts, md5_key]).encode()).hexdigest()
    return "|".join([*parts, sign]).encode()
