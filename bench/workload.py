"""The workload: pending orders and pre-signed GoPay notifications, 30% of them duplicates.

Signing happens here, before any measurement, in worker processes; the load generator only
replays bytes. Requests go to one file per load-generator thread (`PREFIX.0`, `PREFIX.1`, ...)
as records "<length>\\n<raw HTTP request>", dealt round-robin so the threads keep the order.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from receiver.simulate import GoPaySimulator, php_json_encode

MCHID = "100001"
AMOUNT_MINOR = 10000
AMOUNT_TEXT = "100.000"
CURRENCY = "CNY"
PATH = "/notify/gopay"
_CHUNK = 2000
# A duplicate repeats a notification sent at least this many deliveries earlier, so that it
# usually arrives after the original, as a gateway's retry does.
_DUPLICATE_LAG = 64


@dataclass(frozen=True, slots=True)
class Notification:
    """One delivery: the request bytes and the order it is about."""

    out_trade_no: str
    request: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestSet:
    """Request files for one phase and the orders they need."""

    prefix: Path
    out_trade_nos: tuple[str, ...]
    deliveries: int
    duplicates: int


def charge(out_trade_no: str) -> dict[str, object]:
    """A paid GoPay charge for one bench order, as the platform sends it."""
    return {
        "mid": int(MCHID),
        "out_trade_no": out_trade_no,
        "in_trade_no": "GP" + out_trade_no,
        "subject": "VIP充值",
        "channel": "gopay_bankupi",
        "amount": AMOUNT_TEXT,
        "pay_amount": AMOUNT_TEXT,
        "currency": CURRENCY,
        "status": 2,
    }


def http_request(body: bytes, headers: dict[str, str]) -> bytes:
    """The raw HTTP/1.1 request (keep-alive) the load generator writes."""
    lines = [f"POST {PATH} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


_signer: GoPaySimulator | None = None


def _init_worker(private_pem: bytes) -> None:
    global _signer  # noqa: PLW0603 - one signer per worker process
    key = serialization.load_pem_private_key(private_pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    _signer = GoPaySimulator(key)


def _sign_chunk(out_trade_nos: Sequence[str]) -> list[bytes]:
    assert _signer is not None
    return [http_request(*_signer.notify(charge(n))) for n in out_trade_nos]


def sign_all(sim: GoPaySimulator, out_trade_nos: Sequence[str]) -> Iterator[bytes]:
    """Signed requests for the orders, in order, signed on every core."""
    pem = sim.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    chunks = [out_trade_nos[i : i + _CHUNK] for i in range(0, len(out_trade_nos), _CHUNK)]
    workers = os.cpu_count() or 1
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(pem,)) as pool:
        for signed in pool.map(_sign_chunk, chunks):
            yield from signed


def delivery_plan(distinct: int, *, duplicate_share: float, seed: int) -> list[int]:
    """Indices into the distinct notifications: each once, plus duplicates of earlier ones."""
    rng = random.Random(seed)
    plan: list[int] = []
    fresh = 0
    while fresh < distinct:
        if fresh > _DUPLICATE_LAG and rng.random() < duplicate_share:
            plan.append(rng.randrange(fresh - _DUPLICATE_LAG))
        else:
            plan.append(fresh)
            fresh += 1
    return plan


def write_request_set(
    sim: GoPaySimulator,
    *,
    prefix: Path,
    label: str,
    distinct: int,
    duplicate_share: float,
    threads: int,
    seed: int,
    fresh_duplicates: bool = False,
) -> RequestSet:
    """Sign `distinct` notifications for orders `label-N` and write the delivery files.

    With `fresh_duplicates`, every delivery gets its own nonce and signature (needed when the
    service checks nonces); otherwise a duplicate repeats the earlier request byte for byte.
    """
    out_trade_nos = tuple(f"{label}-{i:07d}" for i in range(distinct))
    plan = delivery_plan(distinct, duplicate_share=duplicate_share, seed=seed)
    if fresh_duplicates:
        requests = sign_all(sim, [out_trade_nos[i] for i in plan])
    else:
        signed = list(sign_all(sim, out_trade_nos))
        requests = (signed[i] for i in plan)
    files = [open(f"{prefix}.{t}", "wb") for t in range(threads)]  # noqa: SIM115
    try:
        for slot, request in enumerate(requests):
            files[slot % threads].write(b"%d\n%s" % (len(request), request))
    finally:
        for f in files:
            f.close()
    return RequestSet(
        prefix=prefix,
        out_trade_nos=out_trade_nos,
        deliveries=len(plan),
        duplicates=len(plan) - distinct,
    )


def read_requests(prefix: Path, threads: int) -> list[list[bytes]]:
    """The raw requests of each thread's file (for the Python load generator)."""
    result = []
    for t in range(threads):
        data = Path(f"{prefix}.{t}").read_bytes()
        requests, pos = [], 0
        while pos < len(data):
            nl = data.index(b"\n", pos)
            length = int(data[pos:nl])
            requests.append(data[nl + 1 : nl + 1 + length])
            pos = nl + 1 + length
        result.append(requests)
    return result


async def create_orders(conn: asyncpg.Connection, out_trade_nos: Sequence[str]) -> None:
    """Pending orders, as a merchant's checkout creates them, loaded with one COPY."""
    await conn.copy_records_to_table(
        "orders",
        columns=["provider", "merchant_id", "out_trade_no", "amount_minor", "currency"],
        records=(("gopay", MCHID, n, AMOUNT_MINOR, CURRENCY) for n in out_trade_nos),
    )


def example_body(size: int = 330) -> tuple[bytes, dict[str, str]]:
    """A body of `size` bytes and the three signature headers (the pgbench anchor's inbox rows).

    The size is the issue's (#12) definition of the anchor; the service's bodies are shorter
    (about 250 bytes), which makes no measurable difference to an insert's cost.
    """
    body = php_json_encode({"result_code": "OK", "result_msg": "SUCCESS", "charge": charge("X")})
    headers = {"x-ca-noncestr": "0" * 32, "x-ca-timestamp": "1700000000000", "x-ca-signature": ""}
    headers["x-ca-signature"] = "A" * 344
    return body.ljust(size), headers
