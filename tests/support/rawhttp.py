"""Raw bytes over a real socket, for tests whose subject is the HTTP parser or the connection.

reply = await exchange(host, port, b"POST /notify/gopay HTTP/1.1\\r\\n...")
reply.status, reply.headers["server"], reply.body
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass


@dataclass(frozen=True)
class RawReply:
    """One HTTP reply as read off the socket (header names lower-cased)."""

    status: int
    headers: dict[str, str]
    body: bytes


def request(
    path: str = "/notify/gopay",
    *,
    method: str = "POST",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    extra: bytes = b"",
) -> bytes:
    """A request head (Content-Length from the body unless a header says otherwise) + body;
    `extra` is raw header bytes added as they are."""
    given = {"Host": "receiver.test", "Content-Type": "application/json"} | (headers or {})
    if not any(k.lower() in {"content-length", "transfer-encoding"} for k in given):
        given["Content-Length"] = str(len(body))
    head = f"{method} {path} HTTP/1.1\r\n".encode()
    head += b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in given.items())
    return head + extra + b"\r\n" + body


async def exchange(host: str, port: int, data: bytes, *, within_s: float = 5.0) -> RawReply:
    """Send `data` on a new connection and read one reply."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        async with asyncio.timeout(within_s):
            return await read_reply(reader)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def read_reply(reader: asyncio.StreamReader) -> RawReply:
    """One final reply (interim 1xx ones skipped): its head, then Content-Length bytes of body
    (or up to EOF)."""
    head = await reader.readuntil(b"\r\n\r\n")
    while head.startswith(b"HTTP/1.1 1"):
        head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:
        body = await reader.read()
    return RawReply(status, headers, body)


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """True when the server closes the connection (EOF or reset) within `seconds`."""
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(4096):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return True
