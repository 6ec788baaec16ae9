"""`receiver reconcile`: one pass of order queries, or one order now."""

from __future__ import annotations

import argparse

import aiohttp

from receiver.config import Config
from receiver.errors import ConfigError
from receiver.gateways.queriers import build_queriers
from receiver.gateways.registry import GATEWAYS, PROVIDERS
from receiver.run.commands.args import config_arg, order_ref
from receiver.run.commands.connect import pooled_ledger
from receiver.run.commands.failures import Failure, UsageError
from receiver.run.commands.output import print_line
from receiver.sources import reconcile

QUERY_URL_KEYS = {g.provider: g.query_url_key for g in GATEWAYS}


def add_parser(p: argparse.ArgumentParser) -> None:
    config_arg(p)
    p.add_argument("--provider", choices=PROVIDERS, help="one gateway's orders (default: both)")
    p.add_argument(
        "--order",
        type=order_ref,
        metavar="PROVIDER/MERCHANT/OUT_TRADE_NO",
        help="query this one order now, due or not",
    )


async def reconcile_orders(config: Config, args: argparse.Namespace) -> int:
    provider = args.order[0] if args.order else args.provider
    if args.order and args.provider not in (None, provider):
        raise UsageError("--provider and --order name different gateways")
    queriers = {p: q for p, q in build_queriers(config).items() if provider in (None, p)}
    if not queriers:
        key = QUERY_URL_KEYS.get(provider or "", ", ".join(QUERY_URL_KEYS.values()))
        raise ConfigError(source=config.source, key=key, problem="is empty: no order queries")
    async with pooled_ledger(config) as (pool, book), aiohttp.ClientSession() as session:
        reconciler = reconcile.Reconciler(
            pool=pool,
            ledger=book,
            queriers=queriers,
            session=session,
            config=config.reconcile,
            report=lambda report: print_line(report.as_dict()),
        )
        reports = await _reconcile_pass(reconciler, args)
    if not reports:  # a pass that queried nothing still says so, for cron logs and jq
        summary = {"queried": 0, "providers": sorted(queriers), "detail": "no order is due"}
        print_line(summary)
    attempted = [r for r in reports if r.attempted]
    if attempted and not any(r.reached for r in attempted):
        raise Failure(f"no gateway could be reached ({len(attempted)} queries failed)")
    return 0


async def _reconcile_pass(
    reconciler: reconcile.Reconciler, args: argparse.Namespace
) -> list[reconcile.Report]:
    if args.order is None:
        return await reconciler.run_pass(args.provider)
    try:
        return [await reconciler.query_now(*args.order)]
    except reconcile.OrderNotFound as exc:
        raise Failure(str(exc)) from None
