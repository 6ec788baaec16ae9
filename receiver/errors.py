"""The receiver's exceptions, a small tree; HTTP translation happens in handlers.py only.

ReceiverError
├── ConfigError            configuration file or environment is wrong (exit 2)
├── Rejected               a notification refused by a gateway adapter, with its Outcome
└── DatabaseUnavailable    PostgreSQL cannot be reached: nothing was recorded (503)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from receiver.gateways import Refusal
    from receiver.notification import Outcome


class ReceiverError(Exception):
    """Base of every error the receiver raises on purpose."""


class ConfigError(ReceiverError):
    """A configuration error naming the file, the key and what is wrong (never a value)."""

    def __init__(self, *, source: str, key: str, problem: str) -> None:
        super().__init__(f"{source}: {key}: {problem}")
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
        refusal: Refusal | None = None,
    ) -> None:
        super().__init__(f"{outcome.value}: {reason}")
        self.outcome = outcome
        self.refusal = refusal  # answered as this refusal, stored as `outcome` (415: media type)
        self.reason = reason
        self.merchant_id = merchant_id
        self.out_trade_no = out_trade_no


class DatabaseUnavailable(ReceiverError):
    """The database could not be reached or failed mid-transaction; nothing was committed."""
