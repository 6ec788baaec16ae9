"""How the commands write: JSON (lines) on stdout, and stdout closed or gone."""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from typing import Any

import asyncpg


def print_line(row: dict[str, Any]) -> None:
    print(json.dumps(jsonable(row), ensure_ascii=False), flush=True)


def note(row: asyncpg.Record) -> dict[str, Any]:
    """A stored notification as shown: its headers as JSON, not as text."""
    shown = jsonable(dict(row))
    shown["headers"] = json.loads(row["headers"])
    return shown


def jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {key: _json_value(value) for key, value in row.items()}


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


def ensure_stdout() -> None:
    # Started with stdout closed (`>&-`), Python has none: what would be printed goes nowhere,
    # as if stdout were /dev/null, rather than ending the command with an AttributeError.
    if sys.stdout is None:
        sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - for the process


def flushed(code: int) -> int:
    # Written here, a closed pipe is an error main() reports; left to the interpreter's exit,
    # it is a traceback-like "Exception ignored" message and exit status 120.
    sys.stdout.flush()
    return code


def discard_stdout() -> None:
    # What is still buffered for the closed pipe goes nowhere, not into an error at exit.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
