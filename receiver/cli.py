"""The `receiver` command: serve, migrate, orders add|show, demo.

Exit status: 0 success, 2 bad usage or configuration, 1 failure; one clear line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, NoReturn

import asyncpg

from receiver import database, ledger
from receiver.config import Config, load_config
from receiver.errors import ConfigError, DatabaseUnavailable
from receiver.logging import configure_logging
from receiver.notification import parse_money

PROVIDERS = ("gopay", "baofoo")


class UsageError(Exception):
    """Bad command-line usage (exit 2)."""


class Failure(Exception):
    """The command could not do its work (exit 1)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """The command line as SPEC.md gives it."""
    parser = _Parser(prog="receiver", description="GoPay and Baofoo payment-notification receiver")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    serve = sub.add_parser("serve", help="run the service")
    _config_arg(serve)
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int, default=1, help="processes sharing the port")
    _config_arg(sub.add_parser("migrate", help="apply sql/ migrations"))
    orders = sub.add_parser("orders", help="create or inspect orders")
    osub = orders.add_subparsers(dest="orders_command", required=True, parser_class=_Parser)
    add = osub.add_parser("add", help="create a pending order and print it as JSON")
    _order_key_args(add)
    add.add_argument("--amount", required=True, help="decimal amount, e.g. 100.00")
    add.add_argument("--currency", default="CNY")
    add.add_argument("--channel")
    _order_key_args(osub.add_parser("show", help="print an order and its notifications"))
    demo = sub.add_parser("demo", help="the whole loop on one machine, with a summary")
    demo.add_argument("--keep", action="store_true", help="keep the demo database directory")
    from receiver.simulate.command import add_simulate_parser  # noqa: PLC0415 - imports this module

    add_simulate_parser(sub, _Parser)
    return parser


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML configuration file")


def _order_key_args(p: argparse.ArgumentParser) -> None:
    _config_arg(p)
    p.add_argument("--provider", required=True, choices=PROVIDERS)
    p.add_argument("--merchant", required=True)
    p.add_argument("--out-trade-no", required=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    try:
        args = build_parser().parse_args(argv)
        return _run(args)
    except UsageError as exc:
        return _fail(2, f"usage: {exc} (see receiver --help)")
    except ConfigError as exc:
        return _fail(2, f"configuration error: {exc}")
    except (DatabaseUnavailable, database.MigrationError, Failure) as exc:
        return _fail(1, str(exc))
    except KeyboardInterrupt:
        return 130


def _fail(code: int, line: str) -> int:
    print(f"receiver: {line}", file=sys.stderr)
    return code


def _run(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from receiver.demo import run_demo  # noqa: PLC0415 - keeps the CLI quick to start

        return run_demo(keep=args.keep)
    if args.command == "simulate":
        from receiver.simulate.command import run_simulate  # noqa: PLC0415

        return run_simulate(args)
    config = load_config(args.config)
    configure_logging(fmt=config.log.format, level=config.log.level)
    if args.command == "serve":
        from receiver.serve import serve  # noqa: PLC0415

        _check_workers(args.workers)
        return serve(config, host=args.host, port=args.port, workers=args.workers)
    if args.command == "migrate":
        return asyncio.run(_migrate(config))
    if args.orders_command == "add":
        return asyncio.run(_orders_add(config, args))
    return asyncio.run(_orders_show(config, args))


def _check_workers(workers: int) -> None:
    if workers < 1:
        raise UsageError("--workers must be 1 or more")
    if workers > 1 and not hasattr(socket, "SO_REUSEPORT"):
        raise UsageError("--workers above 1 needs SO_REUSEPORT, which this system lacks")


@asynccontextmanager
async def _connect(config: Config) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the configured (or embedded) database, its schema current."""
    async with database.database_url(config.database) as url:
        try:
            conn = await asyncpg.connect(url, timeout=database.CONNECT_TIMEOUT_S)
        except database.CONNECTION_ERRORS as exc:
            raise DatabaseUnavailable(database.describe_connection_error(exc)) from exc
        try:
            yield conn
        finally:
            await conn.close()


async def _migrate(config: Config) -> int:
    async with _connect(config) as conn:
        applied = await database.migrate(conn)
    print(f"applied: {', '.join(applied)}" if applied else "schema is current")
    return 0


async def _orders_add(config: Config, args: argparse.Namespace) -> int:
    try:
        amount = parse_money(args.amount)
    except ValueError as exc:
        raise UsageError(f"--amount {args.amount!r}: {exc}") from None
    if amount <= 0:
        raise UsageError("--amount must be greater than zero")
    order = ledger.NewOrder(
        provider=args.provider,
        merchant_id=args.merchant,
        out_trade_no=args.out_trade_no,
        amount_minor=amount,
        currency=args.currency.upper(),
        channel=args.channel,
    )
    async with _connect(config) as conn:
        await database.migrate(conn)
        try:
            row = await ledger.create_order(conn, order)
        except ledger.OrderExists as exc:
            raise Failure(str(exc)) from None
    print(json.dumps(_jsonable(dict(row)), indent=2))
    return 0


async def _orders_show(config: Config, args: argparse.Namespace) -> int:
    async with _connect(config) as conn:
        await database.migrate(conn)
        order, notes = await ledger.find_order(
            conn, provider=args.provider, merchant_id=args.merchant, out_trade_no=args.out_trade_no
        )
    if order is None:
        raise Failure(f"no {args.provider} order {args.out_trade_no} for merchant {args.merchant}")
    shown = _jsonable(dict(order)) | {"notifications": [_note(n) for n in notes]}
    print(json.dumps(shown, indent=2, ensure_ascii=False))
    return 0


def _note(row: asyncpg.Record) -> dict[str, Any]:
    note = _jsonable(dict(row))
    note["headers"] = json.loads(row["headers"])
    return note


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {key: _json_value(value) for key, value in row.items()}


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


if __name__ == "__main__":
    sys.exit(main())
