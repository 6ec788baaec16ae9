"""structlog configuration: one JSON object per line on stdout, or a console format.

The JSON chain is on every notification's path, so it is kept short: the request id comes from
one context variable (structlog's merge_contextvars scans every context variable), and the lines
of one event-loop turn are written together at the start of the next (never later: a line is on
its way before the loop waits for anything), in writes that pipes keep whole.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import json
import logging
import os
import re
import select
import sys
import time
from collections.abc import Callable, MutableMapping
from contextvars import ContextVar
from typing import Any, TextIO

import orjson
import structlog

from receiver.errors import DatabaseUnavailable

# Never log these, whatever a caller binds (SPEC: no key, no signature, no secret).
_SECRET_KEYS = frozenset(
    {"signature", "x-ca-signature", "md5sign", "md5_key", "key", "private_key", "password", "url"}
)
# A bank account or card number: a long run of digits. Keep the last 4 (SPEC: mask the rest).
_ACCOUNT = re.compile(r"(?<!\d)\d{8,}(\d{4})(?!\d)")
_ACCOUNT_MIN = 12  # shorter text cannot hold one: most fields skip the scan
# Identifiers that are long digit runs by nature, not account numbers; and fields the service
# fills from closed sets (levels, gateway names, outcomes, statuses) or with numbers.
_NOT_ACCOUNTS = frozenset(
    {"out_trade_no", "merchant_id", "request_id", "notification_id", "order_id", "pid"}
    | {"timestamp", "level", "logger_name", "provider", "outcome", "from_status", "to_status"}
    | {"http_status", "duration_ms"}
)
# The fields of a line to redact and to scan, decided once per set of key names, since every line
# repeats the same few. Bounded, in case some caller makes key names up.
_PLANS: dict[tuple[str, ...], tuple[tuple[str, ...], tuple[str, ...]]] = {}
_CACHE_MAX = 1024

_REQUEST_ID: ContextVar[str | None] = ContextVar("receiver_request_id", default=None)


def bind_request_id(request_id: str) -> None:
    """Put `request_id` on every line logged from here on in this task (and tasks it starts)."""
    _REQUEST_ID.set(request_id)


def add_request_id(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """The processor that adds the bound request id, when there is one."""
    request_id = _REQUEST_ID.get()
    if request_id is not None:
        event.setdefault("request_id", request_id)
    return event


def mask_account_numbers(text: str) -> str:
    """Replace every run of 12+ digits by asterisks and its last 4 digits."""
    return _ACCOUNT.sub(lambda m: "*" * (len(m.group(0)) - 4) + m.group(1), text)


def redact(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Drop secret fields and mask account numbers in every string field."""
    keys = tuple(event)
    redacted, scanned = _PLANS.get(keys) or _plan(keys)
    for key in redacted:
        event[key] = "[redacted]"
    for key in scanned:
        value = event[key]
        if (
            isinstance(value, str)
            and len(value) >= _ACCOUNT_MIN
            and _ACCOUNT.search(value)  # most text holds none: no substitution to set up
        ):
            event[key] = mask_account_numbers(value)
    return event


def _plan(keys: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The keys to redact and the keys to scan, of a line with these keys."""
    redacted = tuple(key for key in keys if key.lower() in _SECRET_KEYS)
    plan = (redacted, tuple(k for k in keys if k not in _NOT_ACCOUNTS and k not in redacted))
    if len(_PLANS) < _CACHE_MAX:
        _PLANS[keys] = plan
    return plan


def add_timestamp(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """The processor that stamps the time, as structlog's TimeStamper(fmt="iso", utc=True)."""
    event["timestamp"] = iso_utc(time.time_ns())
    return event


def iso_utc(ns: int) -> str:
    """`ns` nanoseconds since the epoch as TimeStamper writes them: datetime.isoformat in UTC
    with a Z, microseconds truncated, and no fraction at all in a whole second."""
    second, fraction = divmod(ns // 1000, 1_000_000)
    text = _second_text(second)
    return f"{text}.{fraction:06d}Z" if fraction else f"{text}Z"


# The lines of one second share its text: a line costs a division and a format, not a datetime.
@functools.lru_cache(maxsize=1)
def _second_text(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


class LineWriter:
    """A structlog logger: each line whole, on `stream`'s file descriptor.

    Inside a running event loop, the lines of one loop turn are written together at the start of
    the next turn; outside a loop, each line is written at once. Lines are grouped into writes of
    at most PIPE_BUF bytes, which a pipe keeps whole, so workers sharing stdout never interleave
    inside a line (a single longer line still goes out in one write). A stream without a file
    descriptor (a test's capture) is written and flushed instead.
    """

    def __init__(self, stream: TextIO) -> None:
        stream.flush()
        self._stream = stream
        try:
            self._fd: int | None = stream.fileno()
        except (OSError, ValueError):
            self._fd = None
        self._pending: list[str] = []
        self._dropped = False
        atexit.register(self.flush)

    def msg(self, message: str) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop in this thread: write now
            self._write([message])
            return
        self._pending.append(message)
        if len(self._pending) == 1:
            loop.call_soon(self.flush)

    def flush(self) -> None:
        if self._pending:
            lines, self._pending = self._pending, []
            self._write(lines)

    def _write(self, lines: list[str]) -> None:
        if self._fd is None:
            self._stream.write("".join(line + "\n" for line in lines))
            self._stream.flush()
            return
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            data = line.encode("utf-8", errors="replace") + b"\n"
            if chunk and size + len(data) > select.PIPE_BUF:
                self._write_all(b"".join(chunk))
                chunk, size = [], 0
            chunk.append(data)
            size += len(data)
        self._write_all(b"".join(chunk))

    def _write_all(self, data: bytes) -> None:
        assert self._fd is not None
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError as exc:
            self._dropping(exc)

    def _dropping(self, exc: OSError) -> None:
        # A closed pipe or a full disk must not stop payments (nor print a traceback per loop
        # turn): the lines are dropped, and the operator is told once.
        if not self._dropped:
            self._dropped = True
            print(f"receiver: log lines are being dropped: stdout: {exc.strerror}", file=sys.stderr)

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


def configure_logging(
    *, fmt: str = "json", level: str = "info", cache: bool = True, stream: TextIO | None = None
) -> None:
    """Configure structlog for the process (call once, from the CLI); `stream`: where the lines
    go instead of stdout (the demo keeps the service's log in a file)."""
    out = sys.stdout if stream is None else stream
    processors: list[Any] = [
        add_request_id,
        structlog.processors.add_log_level,
        add_timestamp,
    ]
    if fmt == "json":
        processors += [structlog.processors.format_exc_info, redact, render_json]
        factory: Any = line_writer_factory(out)
    else:
        processors.append(redact)
        processors.append(structlog.dev.ConsoleRenderer(colors=out.isatty()))
        factory = structlog.PrintLoggerFactory(out)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=factory,
        cache_logger_on_first_use=cache,
    )
    route_library_records(level)


class LibraryRecords(logging.Handler):
    """The standard library's log records (aiohttp, asyncpg, asyncio, warnings) as structlog
    events: the same JSON lines, the same redaction, one writer. A connection error is one
    `error` field, not a traceback: a database outage must not fill the log with them."""

    def emit(self, record: logging.LogRecord) -> None:
        fields: dict[str, Any] = {"logger_name": record.name}
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, _CONNECTION_ERRORS) or _from_asyncpg(error):
            fields["error"] = one_line_error(error)
        elif record.exc_info:
            fields["exc_info"] = record.exc_info
        try:
            structlog.get_logger().log(record.levelno, record.getMessage(), **fields)
        except Exception:  # a logging failure must not become the caller's
            self.handleError(record)


_CONNECTION_ERRORS = (OSError, TimeoutError, EOFError, DatabaseUnavailable)


def _from_asyncpg(error: BaseException | None) -> bool:
    return error is not None and type(error).__module__.startswith("asyncpg")


def one_line_error(error: BaseException | None) -> str:
    """`Type: first line of the message`, for a log field or an operator's one-line reason."""
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}{': ' + text if text else ''}"


def route_library_records(level: str) -> None:
    """Send the root logger's records (every library's) through structlog, at `level`."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, LibraryRecords)]:
        root.removeHandler(handler)
    root.addHandler(LibraryRecords())
    root.setLevel(level.upper())
    logging.captureWarnings(True)


def render_json(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> str:
    """The last processor: the event as one compact JSON line (structlog's JSONRenderer, without
    its keyword arguments on every call)."""
    return json_dumps(event, default=_unserializable)


def json_dumps(obj: Any, *, default: Callable[[Any], Any] | None = None) -> str:
    """Compact JSON text on one line: orjson (a third of the stdlib's time), the stdlib for what
    orjson refuses (integers beyond 64 bits, keys that are not strings, lone surrogates)."""
    try:
        return orjson.dumps(obj, default=default).decode()
    except TypeError:
        return json.dumps(obj, default=default)


def _unserializable(obj: Any) -> Any:
    # As JSONRenderer's fallback: what the object says it logs as, else its repr.
    try:
        return obj.__structlog__()
    except AttributeError:
        return repr(obj)


def line_writer_factory(stream: TextIO) -> Any:
    """A structlog logger factory whose loggers share one LineWriter on `stream`."""
    writer: LineWriter | None = None

    def factory(*_args: Any) -> LineWriter:
        nonlocal writer
        if writer is None:
            writer = LineWriter(stream)
        return writer

    return factory


def get_logger(name: str) -> Any:
    """A structlog logger carrying the module name."""
    return structlog.get_logger(logger_name=name)
