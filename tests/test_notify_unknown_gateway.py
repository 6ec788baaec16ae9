"""A request under /notify/ that names no gateway: 404 and one `request_refused` line with the
path, so that a misconfigured notify URL is visible in the log."""

from __future__ import annotations

import pytest
import structlog

from tests.support.rawhttp import exchange


def _address(client: object) -> tuple[str, int]:
    server = client.server  # type: ignore[attr-defined]
    return server.host, server.port


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/notify/wechat"),
        ("POST", "/notify/gopay/"),
        ("POST", "/notify/baofoo/extra"),
        ("POST", "/notify/"),
        ("GET", "/notify/alipay"),
        ("POST", "/notify/GoPay"),
    ],
)
async def test_a_path_naming_no_gateway_is_404_with_one_log_line(client, db, method, path):
    data = (
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: 2\r\nConnection: close\r\n\r\n{}"
    ).encode("ascii")
    with structlog.testing.capture_logs() as logs:
        reply = await exchange(*_address(client), data)
    assert reply.status == 404
    assert reply.headers["server"] == "receiver"
    refused = [entry for entry in logs if entry["event"] == "request_refused"]
    assert len(refused) == 1, logs
    assert refused[0]["path"] == path
    assert refused[0]["http_status"] == 404
    assert refused[0]["method"] == method
    assert refused[0]["remote_addr"] == "127.0.0.1"
    assert refused[0]["log_level"] == "warning"
    assert [entry for entry in logs if entry["event"] != "request_refused"] == []
    assert await db.fetchval("SELECT count(*) FROM notifications") == 0


async def test_the_path_is_logged_as_sent_without_the_query(client, db):
    data = (
        b"POST /notify/we%0Achat?token=s3cret HTTP/1.1\r\nHost: x\r\n"
        b"Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    with structlog.testing.capture_logs() as logs:
        reply = await exchange(*_address(client), data)
    assert reply.status == 404
    [line] = [entry for entry in logs if entry["event"] == "request_refused"]
    assert line["path"] == "/notify/we%0Achat"
    assert "s3cret" not in str(logs)


async def test_a_long_path_is_cut_in_the_log(client, db):
    path = "/notify/" + "x" * 5000
    with structlog.testing.capture_logs() as logs:
        reply = await client.post(path, data=b"{}")
    assert reply.status == 404
    [line] = [entry for entry in logs if entry["event"] == "request_refused"]
    assert line["path"] == path[:200]


async def test_the_gateways_own_paths_are_not_refused(client, db):
    with structlog.testing.capture_logs() as logs:
        reply = await client.post("/notify/gopay", data=b"{}", headers={"Content-Type": "text/x"})
    assert reply.status == 415
    assert [entry for entry in logs if entry["event"] == "request_refused"] == []


async def test_other_paths_stay_plain_404_without_a_line(client, db):
    with structlog.testing.capture_logs() as logs:
        reply = await client.post("/notifyx/gopay", data=b"{}")
    assert reply.status == 404
    assert logs == []
