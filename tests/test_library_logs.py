"""The libraries' own log records (asyncpg, aiohttp, asyncio) go through structlog: JSON lines,
the same redaction, a connection error as one field rather than a traceback."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import structlog

from receiver.errors import DatabaseUnavailable
from receiver.logging import LibraryRecords, route_library_records


@pytest.fixture
def routed() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    route_library_records("info")
    try:
        yield
    finally:
        for handler in [h for h in root.handlers if isinstance(h, LibraryRecords)]:
            root.removeHandler(handler)
        root.setLevel(level)
        logging.captureWarnings(False)


def raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_a_connection_error_is_one_field_not_a_traceback(routed):
    error = raised(ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)"))
    with structlog.testing.capture_logs() as logs:
        logging.getLogger("asyncpg.pool").warning(
            "Failed to restore the pool connection floor; retrying", exc_info=error
        )
    [line] = logs
    assert line["event"] == "Failed to restore the pool connection floor; retrying"
    assert line["logger_name"] == "asyncpg.pool"
    assert line["log_level"] == "warning"
    assert (
        line["error"]
        == "ConnectionRefusedError: [Errno 111] Connect call failed ('127.0.0.1', 5432)"
    )
    assert "exc_info" not in line


def test_an_unretrieved_database_unavailable_is_one_field_too(routed):
    error = raised(DatabaseUnavailable("database unavailable: connection refused"))
    with structlog.testing.capture_logs() as logs:
        logging.getLogger("asyncio").error("Future exception was never retrieved", exc_info=error)
    [line] = logs
    assert line["error"] == "DatabaseUnavailable: database unavailable: connection refused"
    assert "exc_info" not in line


def test_any_other_error_keeps_its_traceback_for_the_renderer(routed):
    error = raised(ValueError("a bug"))
    with structlog.testing.capture_logs() as logs:
        logging.getLogger("asyncio").error("Task exception was never retrieved", exc_info=error)
    [line] = logs
    assert line["exc_info"][1] is error


def test_records_below_the_configured_level_are_dropped(routed):
    with structlog.testing.capture_logs() as logs:
        logging.getLogger("aiohttp.server").debug("noise")
        logging.getLogger("aiohttp.server").info("kept %s", "arg")
    assert [e["event"] for e in logs] == ["kept arg"]


def test_routing_twice_installs_one_handler(routed):
    route_library_records("info")
    assert sum(isinstance(h, LibraryRecords) for h in logging.getLogger().handlers) == 1
