"""`receiver replay`: re-process stored notifications through today's rules and keys."""

from __future__ import annotations

import argparse
from typing import Any

import asyncpg

from receiver.config import Config
from receiver.gateways.registry import GATEWAYS, PROVIDERS
from receiver.run.commands.args import config_arg, duration, positive
from receiver.run.commands.connect import pooled_ledger
from receiver.run.commands.failures import Failure, UsageError
from receiver.run.commands.notifications import OUTCOMES
from receiver.run.commands.output import print_line
from receiver.sources import replay

# The gateways whose signatures take a secret to verify (Baofoo's MD5 key; GoPay's keys are
# public key files): replay reads their `*_env` variables, and says when they are not there.
VERIFYING_SECRETS = frozenset(g.provider for g in GATEWAYS if g.verify_needs_secret)


def add_parser(p: argparse.ArgumentParser) -> None:
    config_arg(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--id", type=positive, nargs="+", action="extend", dest="ids", help="stored ids"
    )
    which.add_argument("--outcome", choices=OUTCOMES, help="every pushed one with this outcome")
    p.add_argument("--provider", choices=PROVIDERS, help="with --outcome")
    p.add_argument("--since", type=duration, metavar="D", help="with --outcome")
    p.add_argument("--dry-run", action="store_true", help="say what would happen, store nothing")


async def replay_notifications(config: Config, args: argparse.Namespace) -> int:
    if args.ids and (args.provider or args.since):
        raise UsageError("--provider and --since go with --outcome, not --id")
    from receiver.gateways.registry import build_gateways  # noqa: PLC0415

    gateways = build_gateways(config)
    selection = replay.Selection(
        ids=args.ids or (), outcome=args.outcome, provider=args.provider, since=args.since
    )
    async with pooled_ledger(config) as (pool, book):
        unverifiable = _unverifiable(config)
        try:
            async for rows in replay.select(pool, selection):
                for row in rows:
                    if row["provider"] in unverifiable:
                        print_line(_not_verified(row, why=unverifiable[row["provider"]]))
                        continue
                    done = await replay.replay(
                        row, gateways=gateways, ledger=book, dry_run=args.dry_run
                    )
                    print_line(done.as_dict())
        except replay.NoSuchNotification as exc:
            raise Failure(str(exc)) from None
    return 0


def _unverifiable(config: Config) -> dict[str, str]:
    """The gateways whose signatures this command cannot verify, their keys not being read."""
    missing: dict[str, list[str]] = {}
    for deferred in config.deferred:
        provider = deferred.named_by.split(".", 1)[0]
        if provider in VERIFYING_SECRETS:
            missing.setdefault(provider, []).append(f"{deferred.variable} ({deferred.named_by})")
    return {p: f"not verified: {', '.join(v)} not available" for p, v in missing.items()}


def _not_verified(row: asyncpg.Record, *, why: str) -> dict[str, Any]:
    return replay.Replayed(
        replay_of=row["id"],
        provider=row["provider"],
        was=row["outcome"],
        outcome=None,
        reason=why,
        dry_run=True,
    ).as_dict()
