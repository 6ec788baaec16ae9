"""`receiver check-config`, `receiver migrate` and `receiver prune`: the deployment's upkeep."""

from __future__ import annotations

import argparse
import json
import os
import sys

from receiver.config import Config, load_config, require_merchants
from receiver.errors import ConfigError
from receiver.run.commands.connect import connect
from receiver.run.commands.failures import Failure
from receiver.run.commands.output import print_line
from receiver.store import database


def check_config(config: Config, *, explicit: str | None) -> int:
    """Load every key file and the TLS pair as serve would; print what would run, no secret.

    The secrets' variables are not required (the machine that checks a deployment seldom has
    them): each is shown as set or not, and one that serve would refuse is a warning on stderr.
    """
    from receiver.gateways.queriers import build_queriers  # noqa: PLC0415
    from receiver.gateways.registry import build_gateways  # noqa: PLC0415
    from receiver.run.observe import summary  # noqa: PLC0415
    from receiver.run.serve import tls_context  # noqa: PLC0415

    require_merchants(config)
    build_gateways(config)
    build_queriers(config)  # the merchants' query keys
    tls = tls_context(config.server, source=config.source) is not None
    server = {"host": config.server.host, "port": config.server.port, "tls": tls}
    secrets = [
        {"variable": d.variable, "named_by": d.named_by, "set": bool(os.environ.get(d.variable))}
        for d in config.deferred
    ]
    print(json.dumps(summary(config) | {"server": server, "secrets": secrets}, indent=2))
    try:
        load_config(explicit)
    except ConfigError as exc:
        print(f"receiver: warning: serve would refuse to start: {exc}", file=sys.stderr)
    return 0


async def migrate(config: Config) -> int:
    async with connect(config, create=True) as conn:
        applied = await database.migrate(conn)
    print(f"applied: {', '.join(applied)}" if applied else "schema is current")
    return 0


async def prune(config: Config, args: argparse.Namespace) -> int:
    from receiver.store import retention  # noqa: PLC0415 - keeps the CLI quick to start

    async with connect(config) as conn:
        try:
            months = await retention.prune(conn, config.retention, dry_run=args.dry_run)
        except (retention.PruneBusy, retention.ArchiveError) as exc:
            raise Failure(str(exc)) from None
    for month in months:
        print_line(month.as_dict())
    return 0
