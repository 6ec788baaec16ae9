"""The argument parser class and the argument types the commands share."""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from receiver.gateways.registry import PROVIDERS
from receiver.run.commands.failures import UsageError
from receiver.store import ops

MAX_BIGINT = 2**63 - 1
MAX_WORKERS = 64


class Parser(argparse.ArgumentParser):
    """A parser whose errors are UsageError (exit 2), not argparse's own exit."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see receiver --help)")


def config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="F",
        help="TOML configuration file (default: $RECEIVER_CONFIG, else ./receiver.toml if"
        " present, else built-in defaults)",
    )


def port(text: str) -> int:
    """A TCP port number (0: any free port), for argparse."""
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"{number} is not a port number (0-65535)")
    return number


def duration(text: str) -> Any:
    try:
        return ops.parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number above 0")
    if int(text) > MAX_BIGINT:  # what PostgreSQL takes for an id or a LIMIT
        raise argparse.ArgumentTypeError(f"{text} is out of range (at most {MAX_BIGINT})")
    return int(text)


def order_ref(text: str) -> tuple[str, str, str]:
    provider, _, rest = text.partition("/")
    merchant, _, out_trade_no = rest.partition("/")
    if not (merchant and out_trade_no):
        raise argparse.ArgumentTypeError(f"{text!r} is not PROVIDER/MERCHANT/OUT_TRADE_NO")
    if provider not in PROVIDERS:
        raise argparse.ArgumentTypeError(
            f"unknown provider {provider!r} ({' or '.join(PROVIDERS)})"
        )
    return provider, merchant, out_trade_no
