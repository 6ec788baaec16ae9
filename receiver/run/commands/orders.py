"""`receiver orders add|show|list|resolve`."""

from __future__ import annotations

import argparse
import json
import re
from datetime import timedelta

from receiver.config import Config
from receiver.core.notification import MAX_IDENTIFIER_LENGTH, is_identifier, parse_money
from receiver.gateways.registry import BY_PROVIDER, PROVIDERS
from receiver.run.commands.args import Parser, config_arg, duration, positive
from receiver.run.commands.connect import connect
from receiver.run.commands.failures import Failure, UsageError
from receiver.run.commands.output import jsonable, note, print_line
from receiver.store import ops
from receiver.store.orders import NewOrder, OrderExists, create_order, find_order

STATUSES = ("pending", "paid", "failed", "closed")
_CURRENCY = re.compile(r"[A-Z]{3}")


def add_parsers(osub: argparse._SubParsersAction[Parser]) -> None:
    """orders add, show, list and resolve, under `receiver orders`."""
    add = osub.add_parser("add", help="create a pending order and print it as JSON")
    order_key_args(add)
    add.add_argument("--amount", required=True, help="decimal amount, e.g. 100.00")
    add.add_argument("--currency", default="CNY", help="ISO 4217 code (default: CNY)")
    add.add_argument(
        "--channel",
        help="the payment product: a GoPay channel or a Baofoo PayID (default: none)",
    )
    order_key_args(osub.add_parser("show", help="print an order and its notifications"))


def add_operations_parsers(osub: argparse._SubParsersAction[Parser]) -> None:
    """orders list and resolve: the operators' commands, JSON lines on stdout."""
    _list_args(osub.add_parser("list", help="orders as JSON lines, newest first"))
    resolve = osub.add_parser("resolve", help="close the named reviews, keeping a note and when")
    config_arg(resolve)
    resolve.add_argument(
        "--review",
        type=positive,
        action="append",
        required=True,
        dest="reviews",
        metavar="ID",
        help="a review id, as orders show or orders list --needs-review print it; repeatable",
    )
    resolve.add_argument("--note", required=True, help="what was done about it")


def order_key_args(p: argparse.ArgumentParser) -> None:
    config_arg(p)
    p.add_argument("--provider", required=True, choices=PROVIDERS, help="the gateway")
    p.add_argument(
        "--merchant", required=True, help="GoPay mchid or Baofoo member_id, as configured"
    )
    p.add_argument("--out-trade-no", required=True, help="the merchant's order number")


def _list_args(p: argparse.ArgumentParser) -> None:
    config_arg(p)
    p.add_argument("--provider", choices=PROVIDERS, help="one gateway's (default: both)")
    p.add_argument("--status", choices=STATUSES, help="with this status (default: any)")
    p.add_argument("--needs-review", action="store_true", help="only those with an open review")
    p.add_argument("--overdue", action="store_true", help="pending past reconcile.first_after_s")
    p.add_argument("--older-than", type=duration, metavar="D", help="e.g. 90s, 15m, 3h, 2d")
    p.add_argument("--limit", type=positive, default=1000, help="most lines (default: 1000)")


async def orders_add(config: Config, args: argparse.Namespace) -> int:
    try:
        amount = parse_money(args.amount)
    except ValueError as exc:
        raise UsageError(f"--amount {args.amount!r}: {exc}") from None
    if amount <= 0:
        raise UsageError("--amount must be greater than zero")
    _check_new_order(config, args)
    order = NewOrder(
        provider=args.provider,
        merchant_id=args.merchant,
        out_trade_no=args.out_trade_no,
        amount_minor=amount,
        currency=args.currency,
        channel=args.channel,
    )
    async with connect(config) as conn:
        try:
            row = await create_order(conn, order)
        except OrderExists as exc:
            raise Failure(str(exc)) from None
    print(json.dumps(jsonable(dict(row)), indent=2))
    return 0


def _check_new_order(config: Config, args: argparse.Namespace) -> None:
    """Refuse an order no notification could ever pay: the notify path would refuse its key."""
    if not is_identifier(args.out_trade_no):
        raise UsageError(
            f"--out-trade-no must be 1 to {MAX_IDENTIFIER_LENGTH} printable characters,"
            " as notifications for any other are refused"
        )
    merchants = BY_PROVIDER[args.provider].merchant_ids(config)
    if args.merchant not in merchants:
        listed = ", ".join(sorted(merchants)) or "none"
        raise UsageError(
            f"--merchant {args.merchant!r} is not a {args.provider} merchant of the"
            f" configuration {config.source} (it lists: {listed})"
        )
    if not _CURRENCY.fullmatch(args.currency):
        raise UsageError(f"--currency {args.currency!r} must be 3 upper-case letters, e.g. CNY")


async def orders_show(config: Config, args: argparse.Namespace) -> int:
    async with connect(config) as conn:
        order, notes = await find_order(
            conn, provider=args.provider, merchant_id=args.merchant, out_trade_no=args.out_trade_no
        )
        ids = [] if order is None else [order["id"]]
        reviews = await ops.reviews_of(conn, ids, open_only=False)
    if order is None:
        raise Failure(f"no {args.provider} order {args.out_trade_no} for merchant {args.merchant}")
    shown = jsonable(dict(order)) | {
        "notifications": [note(n) for n in notes],
        "reviews": [jsonable(r) for r in reviews[order["id"]]],
    }
    print(json.dumps(shown, indent=2, ensure_ascii=False))
    return 0


async def orders_list(config: Config, args: argparse.Namespace) -> int:
    overdue = config.reconcile.first_after_s if args.overdue else None
    found = ops.OrderFilter(
        provider=args.provider,
        status=args.status,
        needs_review=args.needs_review,
        overdue_after=None if overdue is None else timedelta(seconds=overdue),
        older_than=args.older_than,
        limit=args.limit,
    )
    async with connect(config) as conn:
        rows = await ops.list_orders(conn, found)
        if args.needs_review:
            ids = [row["id"] for row in rows]
            open_reviews = await ops.reviews_of(conn, ids, open_only=True)
    for row in rows:
        line = dict(row)
        if args.needs_review:
            line["open_reviews"] = [jsonable(r) for r in open_reviews[row["id"]]]
        print_line(line)
    return 0


async def orders_resolve(config: Config, args: argparse.Namespace) -> int:
    if not args.note.strip():
        raise UsageError("--note must say what was done")
    async with connect(config) as conn:
        try:
            closed = await ops.resolve_reviews(conn, review_ids=args.reviews, note=args.note)
        except ops.NotOpen as exc:
            raise Failure(str(exc)) from None
    for row in closed:
        print_line(dict(row))
    return 0
