"""The transport under the handlers, over a real socket: what the HTTP parser refuses, encodings,
forwarded addresses, the Server header, connection deadlines and limits (SPEC: Outcomes and
replies, Connections, Logs)."""

from __future__ import annotations

import asyncio
import errno
import gzip
import ipaddress
import json
import logging
from dataclasses import replace
from typing import Any

import pytest
import structlog

from receiver.config import Config
from receiver.core.notification import Outcome
from receiver.http.connections import ACCEPT_FAILED
from receiver.http.replies import HTTP_STATUS
from receiver.store.database import describe_connection_error
from tests.support.db import order_row, outcomes
from tests.support.gateways import FAIL, SUCCESS, charge
from tests.support.rawhttp import closed_within, exchange, read_reply, request

JSON = {"Content-Type": "application/json"}
SECRET = "c2lnbmF0dXJlLXRoYXQtbXVzdC1uZXZlci1sZWFr"

# What aiohttp's parser refuses, each as raw bytes on the wire.
PARSER_REFUSALS = {
    "control byte in a header value": {"extra": f"X-Ca-Signature: {SECRET}\x01x\r\n".encode()},
    "header over 8 KiB": {"extra": f"X-Ca-Signature: {SECRET}{'a' * 9000}\r\n".encode()},
    "more than 128 headers": {
        "extra": b"".join(b"X-H%d: %s\r\n" % (i, SECRET.encode()) for i in range(140))
    },
    "unknown method": {"method": "FETCH"},
    "lower-case method": {"method": "post"},
    "Content-Length with Transfer-Encoding": {
        "headers": {"Content-Length": "2", "Transfer-Encoding": "chunked"},
        "body": b"2\r\n{}\r\n0\r\n\r\n",
    },
    "chunk-size overflow": {
        "headers": {"Transfer-Encoding": "chunked"},
        "body": b"fffffffffffffffffffffffff\r\n{}\r\n0\r\n\r\n",
    },
    "Expect other than 100-continue": {"headers": {"Expect": f"200-ok {SECRET}"}},
}


def address(client: Any) -> tuple[str, int]:
    return client.server.host, client.server.port


def with_server(config: Config, **server: Any) -> Config:
    return replace(config, server=replace(config.server, **server))


# --- what the parser refuses --------------------------------------------------------------------


@pytest.mark.parametrize("case", PARSER_REFUSALS)
@pytest.mark.parametrize(("path", "fail"), [("/notify/gopay", FAIL), ("/notify/baofoo", b"FAIL")])
async def test_parser_refusal_gets_the_gateways_fail_body_and_one_log_line(
    client, case, path, fail, caplog
):
    data = request(path, **{"body": b"{}"} | PARSER_REFUSALS[case])
    with structlog.testing.capture_logs() as logs:
        reply = await exchange(*address(client), data)
    assert reply.status == 400
    assert reply.body == fail
    assert reply.headers["server"] == "receiver"
    assert len(logs) == 1, logs
    assert logs[0]["http_status"] == 400 and logs[0]["provider"] == path.rsplit("/", 1)[1]
    assert SECRET not in json.dumps(logs) and "200-ok" not in json.dumps(logs)
    assert not [r for r in caplog.records if r.name.startswith("aiohttp")]  # no traceback


async def test_parser_refusal_elsewhere_is_a_plain_400_without_aiohttps_text(client):
    data = request("/healthz", extra=f"X-Ca-Signature: {SECRET}\x01\r\n".encode())
    reply = await exchange(*address(client), data)
    assert (reply.status, reply.body) == (400, b"Bad Request\n")
    assert reply.headers["server"] == "receiver"


async def test_chunk_size_overflow_after_the_head_is_refused_not_a_503(db, config, serve_app):
    client = await serve_app(with_server(config, read_timeout_s=0.5))
    reader, writer = await asyncio.open_connection(*address(client))
    writer.write(request(headers={"Transfer-Encoding": "chunked"}))
    await asyncio.sleep(0.1)  # the head is handled before the broken chunk arrives
    writer.write(b"fffffffffffffffffffffffff\r\n{}\r\n0\r\n\r\n")
    # aiohttp's parser drops the body it cannot frame without telling the handler, which
    # therefore hears nothing more: the body deadline answers.
    reply = await asyncio.wait_for(read_reply(reader), 5)
    writer.close()
    assert (reply.status, reply.body) == (408, FAIL)
    assert await outcomes(db) == []


async def test_expect_100_continue_still_gets_its_interim_reply(client, signer, make_order):
    await make_order("EX1")
    body, headers = signer.notify(charge("EX1"))
    reader, writer = await asyncio.open_connection(*address(client))
    expect = {"Expect": "100-continue", "Content-Length": str(len(body))}
    writer.write(request(headers=headers | expect))
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim.startswith(b"HTTP/1.1 100 Continue")
    writer.write(body)
    reply = await asyncio.wait_for(read_reply(reader), 5)
    writer.close()
    assert (reply.status, reply.body) == (200, SUCCESS)


# --- Content-Encoding ---------------------------------------------------------------------------


async def test_compressed_body_is_415_stored_and_never_decoded(client, db, signer, make_order):
    await make_order("CE1")
    body, headers = signer.notify(charge("CE1"))
    packed = gzip.compress(body)
    resp = await client.post(
        "/notify/gopay", data=packed, headers=headers | {"Content-Encoding": "gzip"}
    )
    assert (resp.status, await resp.read()) == (415, FAIL)
    row = await db.fetchrow("SELECT outcome, detail, body FROM notifications")
    assert (row["outcome"], row["body"]) == ("malformed", packed)
    assert "Content-Encoding" in row["detail"]
    assert (await order_row(db, "CE1"))["status"] == "pending"


async def test_decompression_bomb_costs_nothing(client, db):
    bomb = gzip.compress(b"\0" * 50_000_000)  # 50 MB of zeros in about 50 KB
    resp = await client.post(
        "/notify/baofoo",
        data=bomb,
        headers={"Content-Encoding": "gzip", "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert (resp.status, await resp.read()) == (415, b"FAIL")
    assert await db.fetchval("SELECT octet_length(body) FROM notifications") == len(bomb)


async def test_gzip_that_does_not_decode_is_415_not_503(client, db):
    resp = await client.post(
        "/notify/gopay", data=b"\x1f\x8b not gzip", headers={"Content-Encoding": "gzip"}
    )
    assert (resp.status, await resp.read()) == (415, FAIL)
    assert await outcomes(db) == ["malformed"]


@pytest.mark.parametrize("encoding", ["identity", "", "Identity, identity"])
async def test_identity_or_empty_content_encoding_is_accepted(client, signer, make_order, encoding):
    await make_order("CE2")
    body, headers = signer.notify(charge("CE2"))
    resp = await client.post(
        "/notify/gopay", data=body, headers=headers | {"Content-Encoding": encoding}
    )
    assert (resp.status, await resp.read()) == (200, SUCCESS)


async def test_a_notification_sent_chunked_is_applied(client, db, signer, make_order):
    await make_order("CH1")
    body, headers = signer.notify(charge("CH1"))
    half = len(body) // 2
    chunked = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (
        half,
        body[:half],
        len(body) - half,
        body[half:],
    )
    reply = await exchange(
        *address(client), request(headers=headers | {"Transfer-Encoding": "chunked"}, body=chunked)
    )
    assert (reply.status, reply.body) == (200, SUCCESS)
    assert (await order_row(db, "CH1"))["status"] == "paid"


async def test_a_body_sent_after_its_head_is_waited_for_and_applied(client, db, signer, make_order):
    await make_order("LB1")
    body, headers = signer.notify(charge("LB1"))
    whole = request(headers=headers, body=body)
    head_end = whole.index(b"\r\n\r\n") + 4
    reader, writer = await asyncio.open_connection(*address(client))
    writer.write(whole[:head_end])  # the head alone: the handler has to wait for the body
    await asyncio.sleep(0.2)
    writer.write(whole[head_end:])
    reply = await asyncio.wait_for(read_reply(reader), 5)
    writer.close()
    assert (reply.status, reply.body) == (200, SUCCESS)
    assert (await order_row(db, "LB1"))["status"] == "paid"


async def test_a_chunked_body_over_the_limit_is_413_with_its_reason(client, config):
    limit = config.server.max_body_bytes
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (limit + 1, b"x" * (limit + 1))
    data = request(headers={"Transfer-Encoding": "chunked"}, body=chunked)
    with structlog.testing.capture_logs() as logs:
        reply = await exchange(*address(client), data)
    assert (reply.status, reply.body) == (413, FAIL)
    [line] = [entry for entry in logs if entry["event"] == "notification"]
    assert line["reason"] == f"body is over the {limit}-byte limit"


# --- X-Request-Id -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "kept"), [("gw-req.42_A", True), ("", False), ("not an id", False)]
)
async def test_a_given_request_id_is_kept_when_it_fits_else_replaced(
    client, signer, make_order, given, kept
):
    await make_order("RI1")
    body, headers = signer.notify(charge("RI1"))
    resp = await client.post("/notify/gopay", data=body, headers=headers | {"X-Request-Id": given})
    assert resp.status == 200
    assert (resp.headers["X-Request-Id"] == given) is kept
    assert resp.headers["X-Request-Id"]


# --- X-Forwarded-For ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "forwarded",
    [b"fe80::1%\xff\xfe", b"fe80::1%eth0", b"203.0.113.9\xff", b"\xc3\x28, 198.51.100.7%zz"],
)
async def test_forwarded_for_that_is_not_text_is_no_address_not_a_503(
    db, config, serve_app, forwarded
):
    loopback = (ipaddress.ip_network("127.0.0.0/8"),)
    client = await serve_app(with_server(config, trusted_proxies=loopback))
    data = request(extra=b"X-Forwarded-For: " + forwarded + b"\r\n", body=b"{}")
    with structlog.testing.capture_logs() as logs:
        reply = await exchange(*address(client), data)
    assert (reply.status, reply.body) == (400, FAIL)
    assert await db.fetchval("SELECT remote_addr FROM notifications") == "127.0.0.1"
    assert [entry["remote_addr"] for entry in logs] == ["127.0.0.1"]


# --- replies and log lines ----------------------------------------------------------------------


def test_every_outcome_has_an_http_status():
    assert set(HTTP_STATUS) == set(Outcome)


async def test_server_header_names_the_service_not_its_libraries(client):
    for resp in (
        await client.get("/healthz"),
        await client.get("/nowhere"),
        await client.post("/notify/gopay", data=b"{}"),
        await client.get("/notify/gopay"),
    ):
        assert resp.headers["Server"] == "receiver"


async def test_every_notification_log_line_has_the_remote_address(client, signer, make_order):
    await make_order("RA1")
    body, headers = signer.notify(charge("RA1"))
    with structlog.testing.capture_logs() as logs:
        await client.post("/notify/gopay", data=body, headers=headers)  # applied
        await client.post("/notify/gopay", data=b"{}", headers=JSON)  # malformed
        await client.get("/notify/gopay")  # 405
        await client.post("/notify/gopay", data=b"x" * 70000, headers=JSON)  # 413
    lines = [entry for entry in logs if entry["event"] == "notification"]
    assert [entry["http_status"] for entry in lines] == [200, 400, 405, 413]
    assert {entry["remote_addr"] for entry in lines} == {"127.0.0.1"}


async def test_outage_log_line_names_the_order_and_a_readable_reason(
    db, signer, make_order, proxied
):
    await make_order("DB9")
    client, proxy = proxied
    await proxy.cut()
    body, headers = signer.notify(charge("DB9"))
    with structlog.testing.capture_logs() as logs:
        resp = await client.post("/notify/gopay", data=body, headers=headers)
    assert (resp.status, await resp.read()) == (503, FAIL)
    [line] = [entry for entry in logs if entry["event"] == "notification"]
    assert (line["merchant_id"], line["out_trade_no"]) == ("100001", "DB9")
    assert line["reason"].startswith("database unavailable: ")
    assert "Error" not in line["reason"] and "Errno" not in line["reason"]


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (FileNotFoundError(errno.ENOENT, "No such file or directory"), "connection refused"),
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), "connection refused"),
        (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), "connection lost"),
        (TimeoutError(), "timed out"),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), "network is unreachable"),
    ],
)
def test_database_unavailable_reason_is_in_words(exc, reason):
    assert describe_connection_error(exc) == f"database unavailable: {reason}"


# --- connections --------------------------------------------------------------------------------


@pytest.mark.parametrize("sent", [b"", b"POST /notify/gopay HTTP/1.1\r\nHost: x\r\n"])
async def test_connection_without_a_complete_head_is_closed_after_header_timeout(
    db, config, serve_app, sent
):
    client = await serve_app(with_server(config, header_timeout_s=0.5))
    reader, writer = await asyncio.open_connection(*address(client))
    writer.write(sent)
    assert not await closed_within(reader, 0.3)
    assert await closed_within(reader, 1.0)
    writer.close()


async def test_head_trickled_byte_by_byte_is_still_cut_at_header_timeout(db, config, serve_app):
    client = await serve_app(with_server(config, header_timeout_s=0.6))
    reader, writer = await asyncio.open_connection(*address(client))
    loop = asyncio.get_running_loop()
    started = loop.time()
    for byte in b"POST /notify/gopay HTTP/1.1\r\nHost: x\r\n":
        if writer.is_closing() or reader.at_eof():
            break
        writer.write(bytes([byte]))
        await asyncio.sleep(0.05)
    assert await closed_within(reader, 1.0)
    assert loop.time() - started < 2.0
    writer.close()


async def test_idle_keepalive_connection_is_closed_after_keepalive_timeout(db, config, serve_app):
    client = await serve_app(with_server(config, header_timeout_s=0.3, keepalive_timeout_s=1.0))
    reader, writer = await asyncio.open_connection(*address(client))
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    reply = await asyncio.wait_for(read_reply(reader), 5)
    assert reply.status == 200
    assert not await closed_within(reader, 0.6)  # idle, past header_timeout_s: still open
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # and still serving
    assert (await asyncio.wait_for(read_reply(reader), 5)).status == 200
    assert await closed_within(reader, 1.5)
    writer.close()


async def test_next_head_on_a_kept_alive_connection_is_cut_at_header_timeout(db, config, serve_app):
    client = await serve_app(with_server(config, header_timeout_s=0.4, keepalive_timeout_s=5.0))
    reader, writer = await asyncio.open_connection(*address(client))
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await asyncio.wait_for(read_reply(reader), 5)).status == 200
    await asyncio.sleep(0.5)  # idle past header_timeout_s: the keep-alive timeout governs
    writer.write(b"GET /healthz HTTP/1.1\r\n")  # the next head begins, and stops
    assert not await closed_within(reader, 0.2)
    assert await closed_within(reader, 1.0)  # cut at header_timeout_s, not keepalive_timeout_s
    writer.close()


async def test_past_max_connections_new_ones_close_at_once_and_open_ones_finish(
    db, config, serve_app, signer, make_order
):
    await make_order("MC1")
    client = await serve_app(with_server(config, max_connections=2))
    body, headers = signer.notify(charge("MC1"))
    whole = request(headers=headers, body=body)
    head_end = whole.index(b"\r\n\r\n") + 4
    opened = [await asyncio.open_connection(*address(client)) for _ in range(2)]
    opened[0][1].write(whole[:head_end])  # a notification in progress: its body still to come
    await asyncio.sleep(0.1)
    with structlog.testing.capture_logs() as logs:
        reader, writer = await asyncio.open_connection(*address(client))
        assert await closed_within(reader, 0.5)
    assert [entry["event"] for entry in logs] == ["connection_limit_reached"]
    opened[0][1].write(whole[head_end:])
    reply = await asyncio.wait_for(read_reply(opened[0][0]), 5)
    assert (reply.status, reply.body) == (200, SUCCESS)
    for _, w in [*opened, (reader, writer)]:
        w.close()


async def test_accept_failures_are_logged_at_most_once_a_second(client):
    loop = asyncio.get_running_loop()
    failure = OSError(errno.EMFILE, "Too many open files")
    with structlog.testing.capture_logs() as logs:
        for _ in range(500):
            loop.call_exception_handler({"message": ACCEPT_FAILED, "exception": failure})
    assert [(e["event"], e["reason"], e["failures_since_last"]) for e in logs] == [
        ("accept_failed", "Too many open files", 1)
    ]


async def test_other_loop_errors_still_reach_the_previous_handler(client, caplog):
    loop = asyncio.get_running_loop()
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_exception_handler({"message": "something else"})
    assert "something else" in caplog.text
