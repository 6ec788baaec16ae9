"""`receiver serve` as a real process: TLS, several workers, graceful shutdown, hostile clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from receiver.config import ServerConfig
from receiver.run.serve import tls_context
from tests.support.gateways import SUCCESS, charge
from tests.support.service_process import HOST, ServiceProcess, free_port, write_config
from tests.support.tls_support import self_signed

READY_S = 40.0

MakeOrder = Callable[..., Awaitable[asyncpg.Record]]


def notification_pids(svc: ServiceProcess) -> set[int]:
    return {e["pid"] for e in svc.logs() if e.get("event") == "notification"}


# --- TLS ---------------------------------------------------------------------------------------


def old_tls_client(cert_file: Path) -> ssl.SSLContext:
    """A client that speaks TLS 1.0 and 1.1 only (allowed by its own OpenSSL settings)."""
    ctx = ssl.create_default_context(cafile=str(cert_file))
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.warns(DeprecationWarning):
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    return ctx


def handshake(ctx: ssl.SSLContext, port: int) -> str:
    """The protocol version a TLS handshake with 127.0.0.1:port agreed on."""
    with (
        socket.create_connection((HOST, port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=HOST) as tls,
    ):
        return str(tls.version())


def old_tls_server(cert_file: Path, key_file: Path) -> tuple[int, threading.Thread]:
    """A one-shot server that accepts TLS 1.1: proves the old client really offers 1.1."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.warns(DeprecationWarning):
        ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.load_cert_chain(cert_file, key_file)
    listener = socket.create_server((HOST, 0))
    port = listener.getsockname()[1]

    def accept_one() -> None:
        with listener:
            listener.settimeout(10)
            conn, _ = listener.accept()
            with conn, ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)

    thread = threading.Thread(target=accept_one, daemon=True)
    thread.start()
    return port, thread


def test_tls_context_refuses_versions_below_1_2(tmp_path):
    cert_file, key_file = self_signed(tmp_path)
    ctx = tls_context(ServerConfig(tls_cert=cert_file, tls_key=key_file), source="test")
    assert ctx is not None and ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert tls_context(ServerConfig(), source="test") is None


@pytest.mark.slow
async def test_https_serves_notifications_and_refuses_tls_1_1(
    start_service, db, signer, make_order, tmp_path
):
    cert_file, key_file = self_signed(tmp_path)
    svc = start_service(server={"tls_cert": str(cert_file), "tls_key": str(key_file)})
    assert svc.base_url.startswith("https://")
    await make_order("TLS1")
    body, headers = signer.notify(charge("TLS1"))
    trusting = ssl.create_default_context(cafile=str(cert_file))
    url = svc.base_url + "/notify/gopay"
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusting)) as session,
        session.post(url, data=body, headers=headers) as r,
    ):
        assert (r.status, await r.read()) == (200, SUCCESS)
    assert await db.fetchval("SELECT status FROM orders WHERE out_trade_no = 'TLS1'") == "paid"
    with pytest.raises(aiohttp.ClientError):  # plain HTTP to the HTTPS port: dropped
        async with aiohttp.ClientSession() as session:
            await session.get(f"http://{HOST}:{svc.port}/healthz")

    tls12 = ssl.create_default_context(cafile=str(cert_file))
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    assert await asyncio.to_thread(handshake, tls12, svc.port) == "TLSv1.2"

    old = old_tls_client(cert_file)
    control_port, control = old_tls_server(cert_file, key_file)
    try:
        assert await asyncio.to_thread(handshake, old, control_port) == "TLSv1.1"
    except ssl.SSLError as exc:
        pytest.skip(f"this OpenSSL cannot speak TLS 1.1 at all ({exc.reason})")
    finally:
        control.join(5)
    # The same client, shown above to offer TLS 1.1, is refused by the service (an alert or a
    # dropped handshake, depending on the OpenSSL build).
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await asyncio.to_thread(handshake, old, svc.port)
    assert svc.get("/readyz") == 200


# --- several workers ---------------------------------------------------------------------------


@pytest.mark.slow
async def test_workers_share_one_port_and_apply_a_payment_once(
    start_service, db, signer, make_order
):
    svc = start_service(workers=2)
    await make_order("W1")
    started = svc.wait_for_log(lambda e: e["event"] == "workers_started", 5)
    assert len(started["pids"]) == 2 and svc.pid not in started["pids"]

    async def deliver(session: aiohttp.ClientSession) -> tuple[int, bytes]:
        body, headers = signer.notify(charge("W1"))  # a fresh nonce each time
        async with session.post(svc.base_url + "/notify/gopay", data=body, headers=headers) as r:
            return r.status, await r.read()

    # A new connection per request: SO_REUSEPORT spreads connections, not requests.
    connector = aiohttp.TCPConnector(force_close=True, limit=40)
    async with aiohttp.ClientSession(connector=connector) as session:
        replies = await asyncio.gather(*(deliver(session) for _ in range(40)))
    assert replies == [(200, SUCCESS)] * 40
    assert await db.fetchval("SELECT count(*) FROM order_events") == 1
    assert await db.fetchval("SELECT count(*) FROM notifications") == 40
    await asyncio.to_thread(svc.wait_for_log, lambda e: len(notification_pids(svc)) >= 2, 5)
    assert notification_pids(svc) == set(started["pids"])

    svc.signal(signal.SIGTERM)
    assert svc.wait(20) == 0
    stopped = [e["pid"] for e in svc.logs() if e["event"] == "stopped"]
    assert sorted(stopped) == sorted(started["pids"]), svc.output()
    # Three processes share stdout: still one whole JSON object per line.
    assert all(isinstance(json.loads(line), dict) for line in svc.stdout_lines())


@pytest.mark.slow
async def test_a_worker_that_dies_stops_the_others_and_the_exit_status_is_1(start_service):
    svc = start_service(workers=2)
    victim, survivor = svc.wait_for_log(lambda e: e["event"] == "workers_started", 5)["pids"]
    os.kill(victim, signal.SIGKILL)
    assert await asyncio.to_thread(svc.wait, 20) == 1
    logs = svc.logs()
    died = [e for e in logs if e["event"] == "worker_exited_unexpectedly"]
    assert [(e["worker_pid"], e["exitcode"]) for e in died] == [(victim, -signal.SIGKILL)]
    assert any(e["event"] == "stopped" and e["pid"] == survivor for e in logs)


@pytest.mark.slow
async def test_workers_use_one_embedded_database_started_by_the_supervisor(
    gopay_key_file, tmp_path
):
    data_dir = tmp_path / "data"
    config = write_config(
        tmp_path / "embedded.toml",
        gopay_key_file=gopay_key_file,
        database={"data_dir": str(data_dir)},
        server={"shutdown_timeout_s": 5},
    )
    with ServiceProcess(config, env={}, workers=2).start() as svc:
        svc.wait_ready(READY_S)
        statuses = await asyncio.gather(*(asyncio.to_thread(svc.get, "/readyz") for _ in range(20)))
        assert statuses == [200] * 20
        svc.signal(signal.SIGTERM)
        assert await asyncio.to_thread(svc.wait, 30) == 0, svc.output()
    assert (data_dir / "pgdata" / "PG_VERSION").is_file()
    assert not (data_dir / "pgdata" / "postmaster.pid").exists()  # stopped with the supervisor


# --- graceful shutdown -------------------------------------------------------------------------


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def send_partial(port: int, body: bytes, headers: dict[str, str], sent: int) -> Any:
    """Open a connection and send the headers and the first `sent` bytes of the body."""
    reader, writer = await asyncio.open_connection(HOST, port)
    head = ["POST /notify/gopay HTTP/1.1", f"Host: {HOST}", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body[:sent])
    await writer.drain()
    return reader, writer


async def read_reply(reader: asyncio.StreamReader, within: float = 10) -> tuple[int, bytes]:
    """The status and body of one HTTP/1.1 response with a Content-Length."""
    async with asyncio.timeout(within):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = next(
            int(line.split(":", 1)[1])
            for line in lines
            if line.lower().startswith("content-length")
        )
        return int(lines[0].split()[1]), await reader.readexactly(length)


@pytest.mark.slow
async def test_sigterm_finishes_in_flight_notifications_and_exits_zero(
    start_service, db, signer, make_order
):
    shutdown_timeout = 5.0
    svc = start_service(server={"shutdown_timeout_s": shutdown_timeout, "read_timeout_s": 10})
    names = [f"G{i}" for i in range(400)]
    for name in [*names, "INFLIGHT"]:
        await make_order(name)
    results: dict[str, int | str] = {}
    stopping = asyncio.Event()

    async def client(mine: list[str]) -> None:
        async with aiohttp.ClientSession() as session:
            for name in mine:
                body, headers = signer.notify(charge(name))
                try:
                    url = svc.base_url + "/notify/gopay"
                    async with session.post(url, data=body, headers=headers) as r:
                        await r.read()
                        results[name] = r.status
                except aiohttp.ClientError as exc:
                    results[name] = type(exc).__name__
                    if stopping.is_set():
                        return

    clients = [asyncio.create_task(client(names[i::8])) for i in range(8)]
    await asyncio.sleep(1.0)
    # One notification is mid-body when SIGTERM comes: it must still be applied and answered.
    body, headers = signer.notify(charge("INFLIGHT"))
    reader, writer = await send_partial(svc.port, body, headers, sent=len(body) // 2)
    await asyncio.sleep(0.3)
    stopping.set()
    svc.signal(signal.SIGTERM)
    signalled = time.monotonic()
    await asyncio.sleep(1.0)
    writer.write(body[len(body) // 2 :])
    await writer.drain()
    assert await read_reply(reader) == (200, SUCCESS), svc.output()
    await close(writer)
    code = await asyncio.to_thread(svc.wait, shutdown_timeout + 5)
    elapsed = time.monotonic() - signalled
    await asyncio.gather(*clients)

    assert code == 0, svc.output()
    assert elapsed < shutdown_timeout + 2
    statuses = [s for s in results.values() if isinstance(s, int)]
    assert statuses.count(200) >= 20, results
    assert set(statuses) <= {200, 503}, results
    paid = {
        r["out_trade_no"]
        for r in await db.fetch(
            "SELECT o.out_trade_no FROM orders o JOIN notifications n ON n.order_id = o.id"
            " WHERE o.status = 'paid' AND n.outcome = 'applied'"
        )
    }
    acknowledged = {name for name, status in results.items() if status == 200}
    assert acknowledged | {"INFLIGHT"} <= paid  # every 200 was committed
    assert paid <= set(results) | {"INFLIGHT"}  # nothing committed that was never sent
    assert not paid & {name for name, status in results.items() if status == 503}
    assert await db.fetchval("SELECT count(*) FROM order_events") == len(paid)


# --- slow and oversized clients ----------------------------------------------------------------


@pytest.fixture
def hostile_target(start_service) -> ServiceProcess:
    return start_service(server={"read_timeout_s": 1.5, "max_body_bytes": 1024})


async def exchange(port: int, payload: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(payload)
        await writer.drain()
        return await read_reply(reader)
    finally:
        await close(writer)


JSON_HEAD = f"POST /notify/gopay HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"


@pytest.mark.slow
async def test_a_trickling_body_is_cut_off_with_408(hostile_target):
    reader, writer = await asyncio.open_connection(HOST, hostile_target.port)
    writer.write((JSON_HEAD + "Content-Length: 100\r\n\r\n").encode())
    started = time.monotonic()

    async def trickle() -> None:
        for _ in range(100):
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(1.0)

    dripping = asyncio.create_task(trickle())
    try:
        status, _ = await read_reply(reader, within=10)
    finally:
        dripping.cancel()
        await close(writer)
    assert status == 408
    assert 1.4 < time.monotonic() - started < 5
    assert hostile_target.get("/readyz") == 200


@pytest.mark.slow
async def test_a_large_content_length_gets_413_before_the_body_is_sent(hostile_target):
    reader, writer = await asyncio.open_connection(HOST, hostile_target.port)
    try:
        writer.write((JSON_HEAD + "Content-Length: 10000000\r\n\r\n").encode() + b"{" * 512)
        await writer.drain()
        assert (await read_reply(reader, within=3))[0] == 413
    finally:
        await close(writer)


@pytest.mark.slow
async def test_a_whole_chunked_body_over_the_limit_gets_413(hostile_target):
    # It all arrives with the headers (no declared length): the limit is checked on what came.
    body = b"{" * 1100
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    head = (JSON_HEAD + "Transfer-Encoding: chunked\r\n\r\n").encode()
    small = b"a\r\n" + b"{" * 10 + b"\r\n0\r\n\r\n"
    assert (await exchange(hostile_target.port, head + chunked))[0] == 413
    # Under the limit it is read and judged: not JSON.
    assert (await exchange(hostile_target.port, head + small))[0] == 400


@pytest.mark.slow
async def test_a_chunked_body_over_the_limit_gets_413(hostile_target):
    reader, writer = await asyncio.open_connection(HOST, hostile_target.port)
    writer.write((JSON_HEAD + "Transfer-Encoding: chunked\r\n\r\n").encode())

    async def chunks() -> None:
        for _ in range(1000):  # 500 KB if nobody stopped it
            writer.write(b"200\r\n" + b"{" * 512 + b"\r\n")
            await writer.drain()
            await asyncio.sleep(0.005)

    sending = asyncio.create_task(chunks())
    try:
        assert (await read_reply(reader, within=5))[0] == 413
        assert not sending.done()  # refused long before the end
    finally:
        sending.cancel()
        await close(writer)


@pytest.mark.slow
@pytest.mark.parametrize(
    "headers",
    [
        [f"X-Flood-{i}: {'a' * 100}" for i in range(200)],
        [f"X-Flood-{i}: {'a' * 8192}" for i in range(20)],
        [f"X-Huge: {'a' * 100_000}"],
    ],
    ids=["200 headers", "8 KB headers", "one 100 KB header"],
)
async def test_a_header_flood_gets_4xx_and_the_service_stays_ready(hostile_target, headers):
    payload = (JSON_HEAD + "\r\n".join(headers) + "\r\nContent-Length: 2\r\n\r\n{}").encode()
    status, _ = await exchange(hostile_target.port, payload)
    assert 400 <= status < 500
    assert hostile_target.returncode() is None
    assert hostile_target.get("/readyz") == 200


def test_service_process_reports_a_bad_configuration(tmp_path):
    config = write_config(tmp_path / "bad.toml", server={"port": "eighty"})
    svc = ServiceProcess(config, env={}, port=free_port()).start()
    assert svc.wait(20) == 2
    assert any("server.port" in line for line in svc.stderr_lines())
    with pytest.raises(AssertionError, match="exited with 2"):
        svc.wait_ready(1)
