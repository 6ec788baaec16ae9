"""A fuzz run: 10,000 random and mutated requests against both endpoints.

Pass criterion: no 5xx, every reply is exactly one of the gateway's own bodies (so no traceback
or stray text reaches a caller), and the service is still ready afterwards.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest

from tests.baofoo_signer import baofoo_fields, encode_form, sign_baofoo
from tests.test_gopay_http import FAIL, SUCCESS, charge

pytestmark = pytest.mark.slow

REQUESTS_PER_ENDPOINT = 5000
CONCURRENCY = 16

CONTENT_TYPES = [
    "application/json",
    "application/json; charset=UTF-8",
    "application/x-www-form-urlencoded",
    "application/x-www-form-urlencoded; charset=gbk",
    "application/x-www-form-urlencoded; charset=x-unknown",
    "text/plain",
    "",
    "multipart/form-data; boundary=x",
    "application/json; charset=\u00ff",
]


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One of: flip bytes, cut, insert junk, duplicate a slice, or pure noise."""
    kind = rng.randrange(6)
    b = bytearray(data)
    if kind == 0 and b:
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif kind == 1:
        b = b[: rng.randrange(len(b) + 1)]
    elif kind == 2:
        at = rng.randrange(len(b) + 1)
        b[at:at] = rng.choice(
            [b"{", b"}", b'"', b"\\", b"%", b"&", b"=", b"\x00", b"\xff\xfe", b"[" * 50]
        )
    elif kind == 3 and b:
        i, j = sorted(rng.randrange(len(b)) for _ in range(2))
        b[j:j] = b[i:j]
    elif kind == 4:
        b = bytearray(rng.randbytes(rng.randrange(300)))
    return bytes(b)


def mutate_headers(rng: random.Random, headers: dict[str, str]) -> dict[str, str]:
    h = dict(headers)
    roll = rng.random()
    if roll < 0.2:
        h["Content-Type"] = rng.choice(CONTENT_TYPES)
    elif roll < 0.35 and len(h) > 1:
        h.pop(rng.choice([k for k in h if k != "Content-Type"]), None)
    elif roll < 0.5:
        key = rng.choice(list(h))
        raw = mutate(rng, h[key].encode()).decode("latin-1")
        h[key] = "".join(c for c in raw if c.isprintable())  # what an HTTP client can send
    return h


async def fuzz(
    client, path: str, seed: Callable[[], tuple[bytes, dict[str, str]]], allowed: set[bytes]
):
    rng = random.Random(f"{path}-20261122")
    sem = asyncio.Semaphore(CONCURRENCY)
    seen: dict[int, int] = {}

    async def one() -> None:
        body, headers = seed()
        if rng.random() < 0.9:
            body = mutate(rng, body)
        headers = mutate_headers(rng, headers)
        async with sem:
            resp = await client.post(path, data=body, headers=headers)
            reply = await resp.read()
        assert resp.status < 500, (resp.status, body[:200], headers)
        assert reply in allowed, reply[:200]
        seen[resp.status] = seen.get(resp.status, 0) + 1

    await asyncio.gather(*(one() for _ in range(REQUESTS_PER_ENDPOINT)))
    return seen


async def test_fuzzed_requests_never_get_5xx_nor_stray_text(
    client, db, signer, baofoo_md5_key, make_order
):
    await make_order("FZ1")
    await make_order("FZ2", provider="baofoo", amount_minor=100)
    gopay = await fuzz(
        client, "/notify/gopay", lambda: signer.notify(charge("FZ1")), {SUCCESS, FAIL}
    )
    form = encode_form(sign_baofoo(baofoo_fields(TransID="FZ2"), baofoo_md5_key))
    baofoo = await fuzz(
        client,
        "/notify/baofoo",
        lambda: (form, {"Content-Type": "application/x-www-form-urlencoded"}),
        {b"OK", b"FAIL"},
    )
    assert sum(gopay.values()) == sum(baofoo.values()) == REQUESTS_PER_ENDPOINT
    assert len(gopay) > 2 and len(baofoo) > 2  # the mutations reached several outcomes
    assert (await client.get("/readyz")).status == 200
    # Whatever got through, each order moved at most once.
    assert (
        await db.fetchval(
            "SELECT max(c) FROM (SELECT count(*) c FROM order_events GROUP BY order_id) x"
        )
        <= 1
    )
