"""The receiver's exceptions, a small tree; HTTP translation happens in http/replies.py only.

ReceiverError
├── ConfigError            configuration file or environment is wrong (exit 2)
├── Rejected               a notification refused by a gateway adapter, with its Outcome
├── NoEmbeddedDatabase     a command that may not create one found no embedded database (exit 1)
└── DatabaseUnavailable    PostgreSQL cannot be reached: nothing was recorded (503)
    └── DatabaseRefused    it answered but refuses the URL (no such database or role, password)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from receiver.core.notification import Outcome


class ReceiverError(Exception):
    """Base of every error the receiver raises on purpose."""


# ConfigError's source for a value read from the environment: `key` is then the variable.
ENVIRONMENT = "environment"


class ConfigError(ReceiverError):
    """A configuration error naming the file (or the environment variable), the key and what is
    wrong (never a value)."""

    def __init__(self, *, source: str, key: str, problem: str) -> None:
        where = f"environment variable {key}" if source == ENVIRONMENT else f"{source}: {key}"
        super().__init__(f"{where}: {problem}")
        self.source = source
        self.key = key
        self.problem = problem


class Rejected(ReceiverError):
    """A gateway adapter refused a notification; carries what it could learn before refusing."""

    def __init__(
        self,
        outcome: Outcome,
        reason: str,
        *,
        merchant_id: str | None = None,
        out_trade_no: str | None = None,
        media_type: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{outcome.value}: {reason}")
        self.outcome = outcome
        self.media_type = media_type  # the content type, charset or encoding was refused
        self.reason = reason
        self.merchant_id = merchant_id
        self.out_trade_no = out_trade_no
        self.headers = headers or {}  # request headers kept with the stored refusal


class DatabaseUnavailable(ReceiverError):
    """The database could not be reached or failed mid-transaction; nothing was committed."""


class DatabaseRefused(DatabaseUnavailable):
    """The server answered but refuses this URL; waiting will not help (fail fast at start)."""


class NoEmbeddedDatabase(ReceiverError):
    """No embedded database where the configuration points, and this command may not create one."""
