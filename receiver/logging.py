"""structlog configuration: one JSON object per line on stdout, or a console format."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

# Never log these, whatever a caller binds (SPEC: no key, no signature, no secret).
_SECRET_KEYS = frozenset(
    {"signature", "x-ca-signature", "md5sign", "md5_key", "key", "private_key", "password", "url"}
)
# A bank account or card number: a long run of digits. Keep the last 4 (SPEC: mask the rest).
_ACCOUNT = re.compile(r"(?<!\d)\d{8,}(\d{4})(?!\d)")
# Identifiers that are long digit runs by nature, not account numbers.
_NOT_ACCOUNTS = frozenset(
    {"out_trade_no", "merchant_id", "request_id", "notification_id", "order_id", "pid"}
)


def mask_account_numbers(text: str) -> str:
    """Replace every run of 12+ digits by asterisks and its last 4 digits."""
    return _ACCOUNT.sub(lambda m: "*" * (len(m.group(0)) - 4) + m.group(1), text)


def redact(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Drop secret fields and mask account numbers in every string field."""
    for key in list(event):
        if key.lower() in _SECRET_KEYS:
            event[key] = "[redacted]"
        elif isinstance(event[key], str) and key not in _NOT_ACCOUNTS:
            event[key] = mask_account_numbers(event[key])
    return event


def configure_logging(*, fmt: str = "json", level: str = "info", cache: bool = True) -> None:
    """Configure structlog for the process (call once, from the CLI)."""
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=cache,
    )


def get_logger(name: str) -> Any:
    """A structlog logger carrying the module name."""
    return structlog.get_logger(logger_name=name)
