"""`receiver notifications list` and `receiver explain`: stored notifications, read only."""

from __future__ import annotations

import argparse
import json

from receiver.config import Config
from receiver.core.notification import Outcome
from receiver.gateways.registry import PROVIDERS
from receiver.run.commands.args import Parser, config_arg, duration, positive
from receiver.run.commands.connect import connect, read
from receiver.run.commands.failures import Failure
from receiver.run.commands.output import note
from receiver.store import ledger, ops

OUTCOMES = tuple(o.value for o in Outcome)


def add_parsers(sub: argparse._SubParsersAction[Parser]) -> None:
    """notifications list, explain."""
    notes = sub.add_parser("notifications", help="inspect stored notifications")
    nsub = notes.add_subparsers(dest="notifications_command", required=True, parser_class=Parser)
    _list_args(nsub.add_parser("list", help="as JSON lines, newest first, no body"))


def add_explain_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    explain = sub.add_parser("explain", help="why a stored notification got its outcome")
    config_arg(explain)
    explain.add_argument("--id", type=positive, required=True, help="the notification's id")
    explain.add_argument("--text", action="store_true", help="readable text instead of JSON")


def _list_args(p: argparse.ArgumentParser) -> None:
    config_arg(p)
    p.add_argument("--provider", choices=PROVIDERS, help="one gateway's (default: both)")
    p.add_argument("--outcome", choices=OUTCOMES, help="with this outcome (default: any)")
    p.add_argument("--source", choices=ledger.SOURCES, help="from this source (default: any)")
    p.add_argument(
        "--since", type=duration, metavar="D", help="received within D, e.g. 90s, 15m, 3h, 2d"
    )
    p.add_argument("--limit", type=positive, default=1000, help="most lines (default: 1000)")


async def notifications_list(config: Config, args: argparse.Namespace) -> int:
    found = ops.NotificationFilter(
        provider=args.provider,
        outcome=args.outcome,
        source=args.source,
        since=args.since,
        limit=args.limit,
    )
    for row in await read(config, lambda conn: ops.list_notifications(conn, found)):
        print(json.dumps(note(row), ensure_ascii=False), flush=True)
    return 0


async def explain_notification(config: Config, args: argparse.Namespace) -> int:
    from receiver.gateways.registry import build_gateways  # noqa: PLC0415
    from receiver.run import explain  # noqa: PLC0415

    gateways = build_gateways(config)  # the verification keys only, never an API key
    async with connect(config) as conn:  # checks the schema, never migrates
        try:
            found = await explain.explain(conn, args.id, gateways=gateways)
        except explain.NoSuchNotification as exc:
            raise Failure(str(exc)) from None
    text = explain.render_text(found) if args.text else json.dumps(found, ensure_ascii=False)
    print(text)
    return 0
