"""A fuzz run: 10,000 random and mutated requests against both endpoints, and 1,600 more
mutated at the transport level (header bytes, methods, framing) as raw bytes over a socket.

Pass criterion: no 5xx, every reply is exactly one of the gateway's own bodies (so no traceback
or stray text reaches a caller), nothing but the service's own JSON log lines, and the service
is still ready afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
from collections.abc import Callable
from dataclasses import replace

import pytest

from tests.support.baofoo_signer import baofoo_fields, encode_form, sign_baofoo
from tests.support.gateways import FAIL, SUCCESS, charge
from tests.support.rawhttp import RawReply, read_reply

pytestmark = pytest.mark.slow

REQUESTS_PER_ENDPOINT = 5000
RAW_REQUESTS_PER_ENDPOINT = 800
CONCURRENCY = 16
FUZZ_SERVER = {
    "unverified_per_minute": 1_000_000,  # the fuzzer is one address sending forgeries
    "trusted_proxies": (ipaddress.ip_network("127.0.0.0/8"),),  # X-Forwarded-For is read
}
# Short deadlines for raw requests: those whose framing promises more than they send are cut
# quickly (not for the client above, which reuses connections a short keep-alive would close).
RAW_SERVER = FUZZ_SERVER | {
    "header_timeout_s": 0.3,
    "keepalive_timeout_s": 0.3,
    "read_timeout_s": 0.3,
}

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


# --- transport-level mutations, as raw bytes over a socket ------------------------------------

JUNK = [b"\x00", b"\x01", b"\x7f", b"\r", b"\n", b"\xff", b"\xc3\x28", b" ", b":", b"\t", b"\r\n "]
METHODS = [b"post", b"GET", b"PUT", b"FETCH", b"P\x00ST", b"POST POST", b"OPTIONS", b"\xffPOST"]
ENCODINGS = [b"gzip", b"deflate", b"br", b"identity", b"gzip, identity", b"x-\xff", b"GZIP"]


def raw_mutations(rng: random.Random, method: bytes, lines: list[bytes], body: bytes) -> bytes:
    """The request as bytes after one to three transport-level mutations."""
    for _ in range(rng.randint(1, 3)):
        method, lines, body = rng.choice(_RAW_MUTATIONS)(rng, method, lines, body)
    return (
        method + b" PATH HTTP/1.1\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n" + body
    )


def _header_bytes(rng, method, lines, body):
    i = rng.randrange(len(lines))
    line = bytearray(lines[i])
    if rng.random() < 0.5:
        line[rng.randrange(len(line))] = rng.randrange(256)
    else:
        at = rng.randrange(len(line) + 1)
        line[at:at] = rng.choice(JUNK)
    return method, [*lines[:i], bytes(line), *lines[i + 1 :]], body


def _big_or_many_headers(rng, method, lines, body):
    if rng.random() < 0.5:
        return method, [*lines, b"X-Pad: " + b"a" * rng.choice([100, 8100, 8200, 20000])], body
    return method, lines + [b"X-H%d: v" % i for i in range(rng.choice([60, 127, 129, 400]))], body


def _method(rng, method, lines, body):
    return rng.choice(METHODS), lines, body


def _chunked(rng, method, lines, body):
    lines = [line for line in lines if not line.lower().startswith(b"content-length")]
    cut = rng.randrange(len(body) + 1)
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:cut], body[cut:]) if part
    )
    broken = [
        b"ffffffffffffffffffffffff\r\n",
        b"zz\r\n",
        b"5\r\nab",
        b"-1\r\n",
        b"1;x=\xff\r\na\r\n",
    ]
    tail = rng.choice([b"0\r\n\r\n", *broken])
    if rng.random() < 0.3:
        lines = [*lines, b"Content-Length: %d" % len(body)]  # both: refused by the parser
    return method, [*lines, b"Transfer-Encoding: chunked"], chunks + tail


def _content_length(rng, method, lines, body):
    lines = [line for line in lines if not line.lower().startswith(b"content-length")]
    value = rng.choice(
        [
            b"%d" % (len(body) + rng.randint(-20, 20)),
            b"-1",
            b"1e3",
            b"0x10",
            b"",
            b"%d, %d" % (len(body), len(body)),
        ]
    )
    return method, [*lines, b"Content-Length: " + value], body


def _content_encoding(rng, method, lines, body):
    return method, [*lines, b"Content-Encoding: " + rng.choice(ENCODINGS)], body


def _expect_or_forwarded(rng, method, lines, body):
    if rng.random() < 0.5:
        return (
            method,
            [*lines, b"Expect: " + rng.choice([b"100-continue", b"200-ok", b"\xff"])],
            body,
        )
    junk = rng.choice([b"fe80::1%\xff", b"203.0.113.9\xfe", b"\xc3\x28, 10.0.0.1", b"unknown"])
    return method, [*lines, b"X-Forwarded-For: " + junk], body


_RAW_MUTATIONS = [
    _header_bytes,
    _big_or_many_headers,
    _method,
    _chunked,
    _content_length,
    _content_encoding,
    _expect_or_forwarded,
]


async def send_raw(host: str, port: int, data: bytes) -> list[RawReply]:
    """Every reply to `data` on one connection, until the server closes it or goes quiet."""
    reader, writer = await asyncio.open_connection(host, port)
    replies: list[RawReply] = []
    try:
        with contextlib.suppress(ConnectionError):
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            while True:
                async with asyncio.timeout(2.0):
                    replies.append(await read_reply(reader))
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return replies


async def fuzz_raw(
    client, path: str, seed: Callable[[], tuple[bytes, dict[str, str]]], allowed: set[bytes]
) -> dict[int, int]:
    rng = random.Random(f"raw-{path}-20261125")
    sem = asyncio.Semaphore(CONCURRENCY)
    seen: dict[int, int] = {}

    async def one() -> None:
        body, headers = seed()
        lines = [f"{k}: {v}".encode() for k, v in headers.items()]
        lines += [b"Host: receiver.test", b"Content-Length: %d" % len(body), b"Connection: close"]
        data = raw_mutations(rng, b"POST", lines, body).replace(b"PATH", path.encode(), 1)
        async with sem:
            replies = await send_raw(client.server.host, client.server.port, data)
        for reply in replies:
            assert reply.status < 500, (reply, data[:300])
            assert reply.body in allowed, (reply, data[:300])
            assert reply.headers["server"] == "receiver"
            seen[reply.status] = seen.get(reply.status, 0) + 1

    await asyncio.gather(*(one() for _ in range(RAW_REQUESTS_PER_ENDPOINT)))
    return seen


async def test_fuzzed_requests_never_get_5xx_nor_stray_text(
    db, config, serve_app, signer, baofoo_md5_key, make_order, caplog, capfd
):
    client = await serve_app(replace(config, server=replace(config.server, **FUZZ_SERVER)))
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
    await make_order("FZ3")
    await make_order("FZ4", provider="baofoo", amount_minor=100)
    raw_form = encode_form(sign_baofoo(baofoo_fields(TransID="FZ4"), baofoo_md5_key))
    raw = await serve_app(replace(config, server=replace(config.server, **RAW_SERVER)))
    raw_gopay = await fuzz_raw(
        raw, "/notify/gopay", lambda: signer.notify(charge("FZ3")), {SUCCESS, FAIL}
    )
    raw_baofoo = await fuzz_raw(
        raw,
        "/notify/baofoo",
        lambda: (raw_form, {"Content-Type": "application/x-www-form-urlencoded"}),
        {b"OK", b"FAIL"},
    )
    assert {400, 415}.issubset(raw_gopay) and {400, 415}.issubset(raw_baofoo), (
        raw_gopay,
        raw_baofoo,
    )
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert capfd.readouterr().err == ""
    assert (await client.get("/readyz")).status == 200
    # Whatever got through, each order moved at most once.
    assert (
        await db.fetchval(
            "SELECT max(c) FROM (SELECT count(*) c FROM order_events GROUP BY order_id) x"
        )
        <= 1
    )
