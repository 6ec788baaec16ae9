"""`receiver events follow`, `receiver deliveries list|retry` on the command line.

Errors are reported here (`run`), with this module's own exception, not by receiver.run.cli's
main().
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from receiver.config import Config
from receiver.events import deliveries
from receiver.events.feed import TYPES, Cursor, EventFilter
from receiver.events.follow import SchemaBehind, follow
from receiver.gateways.registry import PROVIDERS
from receiver.run.commands.args import positive
from receiver.run.commands.connect import connect
from receiver.run.commands.output import discard_stdout, print_line
from receiver.store import database


def add_parsers(sub: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    """`events follow` and `deliveries list|retry`."""
    events = sub.add_parser("events", help="order events for downstream services")
    esub = events.add_subparsers(dest="events_command", required=True, parser_class=parser_class)
    f = esub.add_parser("follow", help="order events as JSON lines: catch up, then follow live")
    f.add_argument("--config", help="TOML configuration file")
    f.add_argument("--after", type=_cursor, default=Cursor(), metavar="CURSOR")
    f.add_argument("--provider", choices=PROVIDERS)
    f.add_argument("--type", choices=TYPES)
    f.add_argument("--once", action="store_true", help="stop when caught up")
    d = sub.add_parser("deliveries", help="forwarding deliveries")
    dsub = d.add_subparsers(dest="deliveries_command", required=True, parser_class=parser_class)
    listing = dsub.add_parser("list", help="deliveries as JSON lines, newest first")
    listing.add_argument("--config", help="TOML configuration file")
    listing.add_argument("--destination")
    listing.add_argument("--state", choices=deliveries.STATES)
    listing.add_argument("--limit", type=positive, default=1000)
    retry = dsub.add_parser("retry", help="make failed (or named) deliveries due now")
    retry.add_argument("--config", help="TOML configuration file")
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--event",
        type=positive,
        nargs="+",
        action="extend",
        dest="events",
    )
    which.add_argument("--failed", action="store_true")
    retry.add_argument("--destination")


class Failed(Exception):
    """The command could not do its work (exit 1)."""


def _cursor(text: str) -> Cursor:
    try:
        return Cursor.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _say(line: str) -> None:
    print(f"receiver: {line}", file=sys.stderr, flush=True)


async def events_follow(config: Config, args: argparse.Namespace) -> int:
    wanted = EventFilter(provider=args.provider, type=args.type)
    try:
        await follow(config, cursor=args.after, wanted=wanted, once=args.once, say=_say)
    except SchemaBehind as exc:
        raise Failed(str(exc)) from None
    except BrokenPipeError:
        discard_stdout()
    return 0


async def deliveries_list(config: Config, args: argparse.Namespace) -> int:
    async with connect(config) as conn:
        await _check_schema(conn)
        rows = await deliveries.list_deliveries(
            conn, destination=args.destination, state=args.state, limit=args.limit
        )
    for row in rows:
        print_line(dict(row))
    return 0


async def deliveries_retry(config: Config, args: argparse.Namespace) -> int:
    async with connect(config) as conn:
        await _check_schema(conn)
        async with conn.transaction():
            if args.events and (missing := await _missing(conn, args)):
                raise Failed(f"no delivery of event {missing}{_to(args.destination)}")
            rows = await deliveries.retry(
                conn, event_ids=args.events or [], failed=args.failed, destination=args.destination
            )
    for row in rows:
        print_line(dict(row))
    return 0


async def _missing(conn: Any, args: argparse.Namespace) -> str:
    unknown = await deliveries.unknown_events(conn, args.events, args.destination)
    return ", ".join(map(str, unknown))


def _to(destination: str | None) -> str:
    return f" to {destination}" if destination else ""


async def _check_schema(conn: Any) -> None:
    if not await database.schema_is_current(conn):
        raise Failed("the database schema is older than this receiver: run receiver migrate")


COMMANDS = {
    ("events", "follow"): events_follow,
    ("deliveries", "list"): deliveries_list,
    ("deliveries", "retry"): deliveries_retry,
}


def run(args: argparse.Namespace, config: Config) -> int:
    """Run the command; one stderr line and exit 1 when it fails."""
    command = COMMANDS[(args.command, getattr(args, f"{args.command}_command"))]
    try:
        return asyncio.run(command(config, args))
    except Failed as exc:
        _say(str(exc))
        return 1
