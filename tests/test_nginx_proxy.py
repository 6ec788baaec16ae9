"""deploy/nginx/receiver.conf in a real nginx in front of the receiver on a real socket."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from receiver.config import Config
from receiver.http.app import create_app
from tests.support.baofoo_signer import baofoo_fields, encode_form, sign_baofoo
from tests.support.service_process import free_port
from tests.support.tls_support import self_signed

pytestmark = pytest.mark.slow

SITE = Path(__file__).resolve().parent.parent / "deploy" / "nginx" / "receiver.conf"
NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
)
BODY_TIMEOUT_S = 1  # the site's client_body_timeout, shortened so the test stays quick
FORM = "application/x-www-form-urlencoded"


def site_for_test(prefix: Path, *, listen: int, upstream: int) -> str:
    """The real site with only its addresses, certificate paths and body timeout changed."""
    text = SITE.read_text(encoding="utf-8")
    edits = {
        "listen 443 ssl;": f"listen 127.0.0.1:{listen} ssl;",
        "listen [::]:443 ssl;": "",
        "server 127.0.0.1:8080;": f"server 127.0.0.1:{upstream};",
        "/etc/nginx/tls/": f"{prefix / 'tls'}/",
        "client_body_timeout 10s;": f"client_body_timeout {BODY_TIMEOUT_S}s;",
    }
    for old, new in edits.items():
        assert old in text, f"the site no longer has {old!r}: update this test"
        text = text.replace(old, new)
    return text


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nginx did not listen on {port}")


@pytest.fixture
def proxy_config(config: Config) -> Config:
    return replace(
        config,
        server=replace(config.server, trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),)),
        baofoo=replace(config.baofoo, allowed_ips=(ipaddress.ip_network("203.0.113.0/24"),)),
    )


@pytest.fixture
async def receiver_port(db, proxy_config: Config) -> AsyncIterator[int]:
    runner = web.AppRunner(create_app(proxy_config), access_log=None)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield port
    finally:
        await runner.cleanup()


@pytest.fixture
def nginx(receiver_port: int, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A real nginx with deploy/nginx/receiver.conf; yields its HTTPS port and its CA file."""
    if NGINX is None:
        pytest.skip("no nginx binary (bash deploy/check.sh installs Debian's nginx)")
    prefix = tmp_path / "nginx"
    (prefix / "tls").mkdir(parents=True)
    (prefix / "logs").mkdir()
    cert, key = self_signed(prefix / "tls")
    cert = cert.rename(prefix / "tls" / "receiver.crt")  # the names the site file uses
    key.rename(prefix / "tls" / "receiver.key")
    port = free_port()
    (prefix / "receiver.conf").write_text(
        site_for_test(prefix, listen=port, upstream=receiver_port)
    )
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers may read the temp prefix
    (prefix / "nginx.conf").write_text(
        f"""{user}daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {prefix}/logs/access.log;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {prefix}/receiver.conf;
}}
"""
    )
    args = [NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf")]
    args += ["-e", str(prefix / "logs" / "error.log")]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
        yield port, cert
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def client_tls(cafile: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


async def test_notification_through_nginx_keeps_the_client_address(
    nginx, db, make_order, baofoo_md5_key
):
    port, cafile = nginx
    await make_order("NGX1", provider="baofoo", amount_minor=100)
    body = encode_form(sign_baofoo(baofoo_fields(TransID="NGX1"), baofoo_md5_key))
    base = f"https://localhost:{port}"
    connector = aiohttp.TCPConnector(ssl=client_tls(cafile))
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.post(
            f"{base}/notify/baofoo",
            data=body,
            headers={"Content-Type": FORM, "X-Forwarded-For": "203.0.113.7"},
        ) as resp:
            assert (resp.status, await resp.read()) == (200, b"OK")
            assert resp.headers.get("X-Request-Id")
        # Without the header, the client is nginx's peer (127.0.0.1): not an allowed source.
        async with session.post(
            f"{base}/notify/baofoo", data=body, headers={"Content-Type": FORM}
        ) as resp:
            assert resp.status == 403
        async with session.get(f"{base}/healthz") as resp:
            assert resp.status == 200
        async with session.get(f"{base}/anything-else") as resp:
            assert resp.status == 404
    rows = await db.fetch("SELECT remote_addr, outcome FROM notifications ORDER BY id")
    assert [tuple(r) for r in rows] == [("203.0.113.7", "applied"), ("127.0.0.1", "ip_denied")]
    status = await db.fetchval("SELECT status FROM orders WHERE out_trade_no = 'NGX1'")
    assert status == "paid"


async def test_nginx_cuts_a_body_that_trickles_slower_than_its_timeout(
    nginx, db, make_order, baofoo_md5_key
):
    port, cafile = nginx
    await make_order("NGX2", provider="baofoo", amount_minor=100)
    body = encode_form(sign_baofoo(baofoo_fields(TransID="NGX2"), baofoo_md5_key))
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=client_tls(cafile), server_hostname="localhost"
    )
    try:
        head = (
            f"POST /notify/baofoo HTTP/1.1\r\nHost: localhost\r\nContent-Type: {FORM}\r\n"
            f"X-Forwarded-For: 203.0.113.7\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + body[:10])
        await writer.drain()
        started = time.monotonic()
        # Nothing more is sent: nginx must give up after client_body_timeout, either with a
        # 408 or (as nginx does) by closing the connection, and pass nothing on.
        async with asyncio.timeout(BODY_TIMEOUT_S + 10):
            reply = await reader.read()
        waited = time.monotonic() - started
    except (ConnectionResetError, ssl.SSLError):
        reply, waited = b"", time.monotonic() - started
    finally:
        writer.close()
    assert reply == b"" or reply.startswith(b"HTTP/1.1 408")
    assert BODY_TIMEOUT_S * 0.5 <= waited < BODY_TIMEOUT_S + 5
    assert await db.fetchval("SELECT count(*) FROM notifications") == 0
    status = await db.fetchval("SELECT status FROM orders WHERE out_trade_no = 'NGX2'")
    assert status == "pending"
