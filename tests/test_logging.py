"""The JSON log writer: whole lines, one write per event-loop turn, request ids, redaction."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import select
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import structlog

from receiver import logging as receiver_logging
from receiver.http.app import new_request_id
from receiver.logging import LineWriter, bind_request_id, configure_logging, iso_utc, redact


@contextlib.contextmanager
def pipe_stream() -> Iterator[tuple[io.TextIOWrapper, int]]:
    """A text stream on the write end of a pipe, and the read end's descriptor."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    stream = os.fdopen(w, "w")
    try:
        yield stream, r
    finally:
        stream.close()
        os.close(r)


def read_available(fd: int) -> bytes:
    try:
        return os.read(fd, 1 << 16)
    except BlockingIOError:
        return b""


def test_outside_an_event_loop_each_line_is_written_at_once():
    with pipe_stream() as (stream, r):
        writer = LineWriter(stream)
        writer.msg('{"event": "a"}')
        assert read_available(r) == b'{"event": "a"}\n'
        writer.msg('{"event": "b"}')
        assert read_available(r) == b'{"event": "b"}\n'


async def test_lines_of_one_loop_turn_go_out_together_at_the_next_turn():
    with pipe_stream() as (stream, r):
        writer = LineWriter(stream)
        for n in range(3):
            writer.msg(json.dumps({"event": "e", "n": n}))
        assert read_available(r) == b""  # still this turn
        await asyncio.sleep(0)
        lines = read_available(r).decode().splitlines()
        assert [json.loads(x)["n"] for x in lines] == [0, 1, 2]
        writer.msg("{}")
        await asyncio.sleep(0)
        assert read_available(r) == b"{}\n"


async def test_writes_hold_whole_lines_and_stay_within_pipe_buf(monkeypatch):
    writes: list[bytes] = []
    real_write = os.write

    def spy(fd: int, data: bytes) -> int:
        writes.append(bytes(data))
        return real_write(fd, data)

    with pipe_stream() as (stream, _):
        writer = LineWriter(stream)
        monkeypatch.setattr(os, "write", spy)
        lines = [json.dumps({"event": "e", "n": n, "pad": "x" * 300}) for n in range(40)]
        for line in lines:
            writer.msg(line)
        writer.msg("y" * (select.PIPE_BUF + 10))  # a longer line: alone, in one write
        await asyncio.sleep(0)
    assert len(writes) > 1
    assert all(w.endswith(b"\n") for w in writes)
    assert all(len(w) <= select.PIPE_BUF for w in writes[:-1])
    assert writes[-1] == b"y" * (select.PIPE_BUF + 10) + b"\n"
    assert b"".join(writes[:-1]).decode().splitlines() == lines


async def test_pending_lines_are_written_by_an_explicit_flush():
    with pipe_stream() as (stream, r):
        writer = LineWriter(stream)
        writer.msg("{}")
        writer.flush()
        assert read_available(r) == b"{}\n"
        await asyncio.sleep(0)
        assert read_available(r) == b""  # the scheduled flush finds nothing left


def test_a_stream_without_a_descriptor_is_written_through():
    stream = io.StringIO()
    LineWriter(stream).msg("{}")
    assert stream.getvalue() == "{}\n"


async def test_json_lines_carry_level_timestamp_and_the_bound_request_id(capsys):
    configure_logging(fmt="json", level="info", cache=False)
    try:
        bind_request_id("rid-1")
        structlog.get_logger().info("probe", amount_minor=100)
        structlog.get_logger().debug("hidden")
        await asyncio.sleep(0)
    finally:
        structlog.reset_defaults()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    line = json.loads(lines[0])
    assert {k: line[k] for k in ("event", "level", "request_id", "amount_minor")} == {
        "event": "probe",
        "level": "info",
        "request_id": "rid-1",
        "amount_minor": 100,
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", line["timestamp"])


@pytest.mark.parametrize(
    ("field", "value", "logged"),
    [
        ("Signature", "c2VjcmV0", "[redacted]"),  # any case
        ("md5_key", "abc", "[redacted]"),
        ("reason", "card 6228480415647314871", "card ***************4871"),
        ("out_trade_no", "6228480415647314871", "6228480415647314871"),  # an id, not an account
        ("reason", "order 12345678", "order 12345678"),
        ("count", 62284804156473148, 62284804156473148),  # not text
    ],
)
def test_redaction_by_field_name_and_value(field, value, logged):
    assert redact(None, "info", {field: value})[field] == logged


def test_request_ids_are_unique_and_fit_the_accepted_pattern():
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"[0-9a-f]{16}-[0-9a-f]+", i) for i in ids)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SECOND_NS = 1_000_000_000


@pytest.mark.parametrize(
    "ns",
    [
        1_795_000_000 * SECOND_NS + 123_456_789,
        1_795_000_000 * SECOND_NS,  # a whole second: isoformat writes no fraction
        1_795_000_000 * SECOND_NS + 999,  # under a microsecond: still a whole second
        1_795_000_000 * SECOND_NS + 1_000,
        1_795_000_000 * SECOND_NS - 1,  # the microsecond before: truncated, not rounded
        1_795_046_399 * SECOND_NS + 999_999_000,  # the last microsecond of a day
    ],
)
def test_timestamps_are_written_as_structlogs_iso_utc_timestamper(ns):
    # TimeStamper(fmt="iso", utc=True) writes datetime.now(UTC).isoformat() with a Z.
    expected = (EPOCH + timedelta(microseconds=ns // 1000)).isoformat().replace("+00:00", "Z")
    assert iso_utc(ns) == expected


def test_a_new_second_gets_its_own_text():
    first = iso_utc(1_795_000_000 * SECOND_NS + 5_000)
    assert iso_utc(1_795_000_001 * SECOND_NS + 5_000) == first.replace(":40.", ":41.")
    assert iso_utc(1_795_000_000 * SECOND_NS + 5_000) == first


def test_redaction_is_the_same_from_the_cache_of_key_names_and_past_its_bound(monkeypatch):
    fields = {"PASSWORD": "p", "reason": "card 6228480415647314871", "order_id": "6228480415647314"}
    redacted = {
        "PASSWORD": "[redacted]",
        "reason": "card ***************4871",
        "order_id": "6228480415647314",
    }
    monkeypatch.setattr(receiver_logging, "_PLANS", {})
    assert redact(None, "info", dict(fields)) == redacted  # decided
    assert redact(None, "info", dict(fields)) == redacted  # from the cache
    assert redact(None, "info", dict(reversed(fields.items()))) == redacted  # another order
    monkeypatch.setattr(receiver_logging, "_PLANS", {})
    for n in range(receiver_logging._CACHE_MAX):
        redact(None, "info", {f"made_up_{n}": "x"})
    assert redact(None, "info", dict(fields)) == redacted  # decided again: the cache is full
    assert len(receiver_logging._PLANS) == receiver_logging._CACHE_MAX


def test_fields_from_closed_sets_are_not_scanned_but_free_text_is():
    digits = "6228480415647314871"
    line = {"event": f"card {digits}", "reason": digits, "outcome": digits, "level": digits}
    assert redact(None, "info", line) == {
        "event": "card ***************4871",
        "reason": "***************4871",
        "outcome": digits,
        "level": digits,
    }
