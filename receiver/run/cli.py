"""The `receiver` command: serve, migrate, orders add|show|list|resolve, notifications list,
replay, reconcile, prune, demo, check-config, --version.

Exit status: 0 success, 2 bad usage or configuration, 1 failure; one clear line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime, timedelta
from typing import Any, NoReturn

import aiohttp
import asyncpg

from receiver.config import Config, load_config, require_merchants
from receiver.core.notification import MAX_IDENTIFIER_LENGTH, Outcome, is_identifier, parse_money
from receiver.errors import ConfigError, DatabaseUnavailable, NoEmbeddedDatabase
from receiver.gateways.queriers import build_queriers
from receiver.gateways.registry import BY_PROVIDER, GATEWAYS, PROVIDERS
from receiver.logging import configure_logging
from receiver.metrics import ListenerError
from receiver.sources import reconcile, replay
from receiver.store import database, ledger, ops


class UsageError(Exception):
    """Bad command-line usage (exit 2)."""


class Failure(Exception):
    """The command could not do its work (exit 1)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see receiver --help)")


def build_parser() -> argparse.ArgumentParser:
    """The command line as SPEC.md gives it."""
    parser = _Parser(prog="receiver", description="GoPay and Baofoo payment-notification receiver")
    parser.add_argument("--version", action=_PrintVersion, nargs=0, help="print the version")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    serve = sub.add_parser("serve", help="run the service")
    _config_arg(serve)
    serve.add_argument(
        "--host", help="address to listen on (default: server.host of the configuration, 127.0.0.1)"
    )
    serve.add_argument(
        "--port",
        type=_port,
        help="port to listen on, 0 for any free one (default: server.port, 8080)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help=f"processes sharing the port, 1 to {MAX_WORKERS} (default: 1)",
    )
    _config_arg(sub.add_parser("migrate", help="apply sql/ migrations"))
    orders = sub.add_parser("orders", help="create or inspect orders")
    osub = orders.add_subparsers(dest="orders_command", required=True, parser_class=_Parser)
    add = osub.add_parser("add", help="create a pending order and print it as JSON")
    _order_key_args(add)
    add.add_argument("--amount", required=True, help="decimal amount, e.g. 100.00")
    add.add_argument("--currency", default="CNY", help="ISO 4217 code (default: CNY)")
    add.add_argument(
        "--channel",
        help="the payment product: a GoPay channel or a Baofoo PayID (default: none)",
    )
    _order_key_args(osub.add_parser("show", help="print an order and its notifications"))
    demo = sub.add_parser("demo", help="the whole loop on one machine, with a summary")
    demo.add_argument(
        "--keep",
        action="store_true",
        help="keep the demo's folder (configuration, log, database) and say how to look inside",
    )
    _config_arg(
        sub.add_parser(
            "check-config",
            help="validate the configuration and its key files, print what would run",
        )
    )
    from receiver.simulate.command import add_simulate_parser  # noqa: PLC0415 - imports this module

    add_simulate_parser(sub, _Parser)
    from receiver.run.events_cli import add_parsers  # noqa: PLC0415 - imports this module

    add_parsers(sub, _Parser)
    _add_operations(sub, osub)
    return parser


class _PrintVersion(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, *_args: Any, **_kw: Any) -> None:
        from receiver.run.observe import version  # noqa: PLC0415

        print(f"receiver {version()}")
        parser.exit()


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="F",
        help="TOML configuration file (default: $RECEIVER_CONFIG, else ./receiver.toml if"
        " present, else built-in defaults)",
    )


def _port(text: str) -> int:
    """A TCP port number (0: any free port), for argparse."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (0-65535)")
    return port


def _order_key_args(p: argparse.ArgumentParser) -> None:
    _config_arg(p)
    p.add_argument("--provider", required=True, choices=PROVIDERS, help="the gateway")
    p.add_argument(
        "--merchant", required=True, help="GoPay mchid or Baofoo member_id, as configured"
    )
    p.add_argument("--out-trade-no", required=True, help="the merchant's order number")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    _ensure_stdout()
    try:
        args = build_parser().parse_args(argv)
        return _flushed(_run(args))
    except UsageError as exc:
        return _fail(2, f"usage: {exc}")
    except ConfigError as exc:
        return _fail(2, f"configuration error: {exc}")
    except (
        DatabaseUnavailable,
        database.MigrationError,
        Failure,
        NoEmbeddedDatabase,
        ListenerError,
    ) as exc:
        return _fail(1, str(exc))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # an operator gets one line, never a traceback
        if sys.flags.dev_mode:  # `python -X dev -m receiver.run.cli ...`: a developer wants it
            raise
        return _fail(1, _describe_unexpected(exc))


def _ensure_stdout() -> None:
    # Started with stdout closed (`>&-`), Python has none: what would be printed goes nowhere,
    # as if stdout were /dev/null, rather than ending the command with an AttributeError.
    if sys.stdout is None:
        sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - for the process


def _flushed(code: int) -> int:
    # Written here, a closed pipe is an error main() reports; left to the interpreter's exit,
    # it is a traceback-like "Exception ignored" message and exit status 120.
    sys.stdout.flush()
    return code


def _describe_unexpected(exc: Exception) -> str:
    """The stderr line for an error no command translated (a closed pipe, a socket, a bug)."""
    if isinstance(exc, BrokenPipeError):
        _discard_stdout()
        return "standard output was closed before everything was written"
    if isinstance(exc, OSError):
        return f"{exc.strerror or type(exc).__name__}{f': {exc.filename}' if exc.filename else ''}"
    text = str(exc).splitlines()[0] if str(exc) else ""
    where = "python -X dev -m receiver.run.cli shows where"
    return f"unexpected error: {type(exc).__name__}{': ' + text if text else ''} ({where})"


def _discard_stdout() -> None:
    # What is still buffered for the closed pipe goes nowhere, not into an error at exit.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _fail(code: int, line: str) -> int:
    print(f"receiver: {line}", file=sys.stderr)
    return code


def _run(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from receiver.run.demo import run_demo  # noqa: PLC0415 - keeps the CLI quick to start

        return run_demo(keep=args.keep)
    if args.command == "simulate":
        from receiver.simulate.command import run_simulate  # noqa: PLC0415

        return run_simulate(args)
    return _run_configured(args, _load(args))


# What each command needs of the gateways' secrets (the `*_env` variables): serve all of them;
# reconcile those of the gateways it queries; replay the keys that verify signatures (GoPay's
# are public key files, Baofoo's is its MD5 key); replay --dry-run those that are available;
# every other command none: it only reads or writes the database.
VERIFYING_SECRETS = frozenset(g.provider for g in GATEWAYS if g.verify_needs_secret)


def _load(args: argparse.Namespace) -> Config:
    """The configuration with the secrets this command uses, and only those."""
    if args.command == "replay" and args.dry_run:
        return load_config(args.config, secrets=_available_secrets(args.config))
    return load_config(args.config, secrets=_secrets_needed(args))


def _secrets_needed(args: argparse.Namespace) -> frozenset[str] | None:
    if args.command == "serve":
        return None  # every secret
    if args.command == "reconcile":
        provider = args.order[0] if args.order else args.provider
        return frozenset(PROVIDERS if provider is None else {provider})
    if args.command == "replay":
        return VERIFYING_SECRETS & {args.provider} if args.provider else VERIFYING_SECRETS
    return frozenset()


def _available_secrets(explicit: str | None) -> frozenset[str]:
    """The gateways whose secrets can be read here (their variables set and well formed)."""
    available = set()
    for provider in PROVIDERS:
        try:
            load_config(explicit, secrets={provider})
        except ConfigError:
            continue
        available.add(provider)
    return frozenset(available)


def _run_configured(args: argparse.Namespace, config: Config) -> int:
    if args.command == "check-config":
        return _check_config(config, explicit=args.config)
    configure_logging(fmt=config.log.format, level=config.log.level)
    if args.command == "serve":
        from receiver.run.serve import serve  # noqa: PLC0415

        require_merchants(config)
        _check_workers(args.workers)
        _check_listen(config, args)
        return serve(config, host=args.host, port=args.port, workers=args.workers)
    if args.command == "migrate":
        return asyncio.run(_migrate(config))
    if args.command in ("events", "deliveries"):
        from receiver.run import events_cli as command  # noqa: PLC0415 - imports this module

        return command.run(args, config)
    return asyncio.run(_command(args)(config, args))


def _check_config(config: Config, *, explicit: str | None) -> int:
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


def _check_workers(workers: int) -> None:
    if workers < 1:
        raise UsageError("--workers must be 1 or more")
    if workers > MAX_WORKERS:
        # Each worker holds database.pool_min connections and more: thousands of processes
        # would take every connection the database has before failing one by one.
        raise UsageError(f"--workers {workers} is out of range (at most {MAX_WORKERS})")
    if workers > 1 and not hasattr(socket, "SO_REUSEPORT"):
        raise UsageError("--workers above 1 needs SO_REUSEPORT, which this system lacks")


def _check_listen(config: Config, args: argparse.Namespace) -> None:
    """Refuse, before the database or any worker starts, an address nobody can listen on."""
    host = args.host or config.server.host
    port = config.server.port if args.port is None else args.port
    try:
        _try_bind(host, port)
    except socket.gaierror as exc:
        problem = f"{host!r} is not a known host name or address ({exc.strerror})"
        if args.host:
            raise UsageError(f"--host {problem}") from None
        raise ConfigError(source=config.source, key="server.host", problem=problem) from None
    except OSError as exc:
        raise Failure(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def _try_bind(host: str, port: int) -> None:
    """Bind (as asyncio's server would) every address `host` names, and let go at once."""
    for family, kind, proto, _, address in socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    ):
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)


@asynccontextmanager
async def _connect(config: Config, *, create: bool = False) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the configured (or embedded) database; only migrate may `create` an
    embedded one (see database.database_url), and every other command finds the schema current
    (it never migrates: older `serve` processes may be using this database).

    Through PgBouncer in transaction mode, the connection is inside one transaction throughout
    (see database.TransactionPool).
    """
    pgbouncer = config.database.pgbouncer
    async with database.database_url(config.database, create=create) as url:
        try:
            conn = await asyncpg.connect(
                url,
                timeout=database.CONNECT_TIMEOUT_S,
                **database.connect_options(pgbouncer=pgbouncer),
            )
        except database.CONNECT_ERRORS as exc:
            raise database.connection_failure(exc) from exc
        try:
            async with AsyncExitStack() as stack:
                if pgbouncer:
                    await stack.enter_async_context(conn.transaction())
                if not create:
                    await _require_current(conn)
                yield conn
        finally:
            await conn.close()


async def _require_current(conn: asyncpg.Connection) -> None:
    try:
        await database.require_current(conn)
    except database.SchemaNotCurrent as exc:
        raise Failure(str(exc)) from None


async def _migrate(config: Config) -> int:
    async with _connect(config, create=True) as conn:
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
    _check_new_order(config, args)
    order = ledger.NewOrder(
        provider=args.provider,
        merchant_id=args.merchant,
        out_trade_no=args.out_trade_no,
        amount_minor=amount,
        currency=args.currency,
        channel=args.channel,
    )
    async with _connect(config) as conn:
        try:
            row = await ledger.create_order(conn, order)
        except ledger.OrderExists as exc:
            raise Failure(str(exc)) from None
    print(json.dumps(_jsonable(dict(row)), indent=2))
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


_CURRENCY = re.compile(r"[A-Z]{3}")


async def _orders_show(config: Config, args: argparse.Namespace) -> int:
    async with _connect(config) as conn:
        order, notes = await ledger.find_order(
            conn, provider=args.provider, merchant_id=args.merchant, out_trade_no=args.out_trade_no
        )
        ids = [] if order is None else [order["id"]]
        reviews = await ops.reviews_of(conn, ids, open_only=False)
    if order is None:
        raise Failure(f"no {args.provider} order {args.out_trade_no} for merchant {args.merchant}")
    shown = _jsonable(dict(order)) | {
        "notifications": [_note(n) for n in notes],
        "reviews": [_jsonable(r) for r in reviews[order["id"]]],
    }
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


# --- operations: orders list|resolve, notifications list, replay, reconcile ------------------

Command = Callable[[Config, argparse.Namespace], Coroutine[Any, Any, int]]
STATUSES = ("pending", "paid", "failed", "closed")
OUTCOMES = tuple(o.value for o in Outcome)
QUERY_URL_KEYS = {g.provider: g.query_url_key for g in GATEWAYS}


def _command(args: argparse.Namespace) -> Command:
    commands: dict[tuple[str, str | None], Command] = {
        ("orders", "add"): _orders_add,
        ("orders", "show"): _orders_show,
        ("orders", "list"): _orders_list,
        ("orders", "resolve"): _orders_resolve,
        ("notifications", "list"): _notifications_list,
        ("replay", None): _replay,
        ("reconcile", None): _reconcile,
        ("explain", None): _explain,
        ("prune", None): _prune,
    }
    return commands[(args.command, getattr(args, f"{args.command}_command", None))]


def _add_operations(
    sub: argparse._SubParsersAction[_Parser], osub: argparse._SubParsersAction[_Parser]
) -> None:
    """The operators' commands: JSON lines on stdout, for jq."""
    _orders_list_args(osub.add_parser("list", help="orders as JSON lines, newest first"))
    resolve = osub.add_parser("resolve", help="close the named reviews, keeping a note and when")
    _config_arg(resolve)
    resolve.add_argument(
        "--review",
        type=_positive,
        action="append",
        required=True,
        dest="reviews",
        metavar="ID",
        help="a review id, as orders show or orders list --needs-review print it; repeatable",
    )
    resolve.add_argument("--note", required=True, help="what was done about it")
    notes = sub.add_parser("notifications", help="inspect stored notifications")
    nsub = notes.add_subparsers(dest="notifications_command", required=True, parser_class=_Parser)
    _notifications_list_args(nsub.add_parser("list", help="as JSON lines, newest first, no body"))
    _replay_args(sub.add_parser("replay", help="re-process stored notifications"))
    _reconcile_args(sub.add_parser("reconcile", help="one pass of order queries"))
    explain = sub.add_parser("explain", help="why a stored notification got its outcome")
    _config_arg(explain)
    explain.add_argument("--id", type=_positive, required=True, help="the notification's id")
    explain.add_argument("--text", action="store_true", help="readable text instead of JSON")
    prune = sub.add_parser("prune", help="apply [retention] now: drop (archive) old months")
    _config_arg(prune)
    prune.add_argument("--dry-run", action="store_true", help="say what would go; change nothing")


def _orders_list_args(p: argparse.ArgumentParser) -> None:
    _config_arg(p)
    p.add_argument("--provider", choices=PROVIDERS, help="one gateway's (default: both)")
    p.add_argument("--status", choices=STATUSES, help="with this status (default: any)")
    p.add_argument("--needs-review", action="store_true", help="only those with an open review")
    p.add_argument("--overdue", action="store_true", help="pending past reconcile.first_after_s")
    p.add_argument("--older-than", type=_duration, metavar="D", help="e.g. 90s, 15m, 3h, 2d")
    p.add_argument("--limit", type=_positive, default=1000, help="most lines (default: 1000)")


def _notifications_list_args(p: argparse.ArgumentParser) -> None:
    _config_arg(p)
    p.add_argument("--provider", choices=PROVIDERS, help="one gateway's (default: both)")
    p.add_argument("--outcome", choices=OUTCOMES, help="with this outcome (default: any)")
    p.add_argument("--source", choices=ledger.SOURCES, help="from this source (default: any)")
    p.add_argument(
        "--since", type=_duration, metavar="D", help="received within D, e.g. 90s, 15m, 3h, 2d"
    )
    p.add_argument("--limit", type=_positive, default=1000, help="most lines (default: 1000)")


def _replay_args(p: argparse.ArgumentParser) -> None:
    _config_arg(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--id", type=_positive, nargs="+", action="extend", dest="ids", help="stored ids"
    )
    which.add_argument("--outcome", choices=OUTCOMES, help="every pushed one with this outcome")
    p.add_argument("--provider", choices=PROVIDERS, help="with --outcome")
    p.add_argument("--since", type=_duration, metavar="D", help="with --outcome")
    p.add_argument("--dry-run", action="store_true", help="say what would happen, store nothing")


def _reconcile_args(p: argparse.ArgumentParser) -> None:
    _config_arg(p)
    p.add_argument("--provider", choices=PROVIDERS, help="one gateway's orders (default: both)")
    p.add_argument(
        "--order",
        type=_order_ref,
        metavar="PROVIDER/MERCHANT/OUT_TRADE_NO",
        help="query this one order now, due or not",
    )


def _duration(text: str) -> Any:
    try:
        return ops.parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number above 0")
    if int(text) > MAX_BIGINT:  # what PostgreSQL takes for an id or a LIMIT
        raise argparse.ArgumentTypeError(f"{text} is out of range (at most {MAX_BIGINT})")
    return int(text)


MAX_BIGINT = 2**63 - 1
MAX_WORKERS = 64


def _order_ref(text: str) -> tuple[str, str, str]:
    provider, _, rest = text.partition("/")
    merchant, _, out_trade_no = rest.partition("/")
    if not (merchant and out_trade_no):
        raise argparse.ArgumentTypeError(f"{text!r} is not PROVIDER/MERCHANT/OUT_TRADE_NO")
    if provider not in PROVIDERS:
        raise argparse.ArgumentTypeError(f"unknown provider {provider!r} (gopay or baofoo)")
    return provider, merchant, out_trade_no


def _print_line(row: dict[str, Any]) -> None:
    print(json.dumps(_jsonable(row), ensure_ascii=False), flush=True)


async def _orders_list(config: Config, args: argparse.Namespace) -> int:
    overdue = config.reconcile.first_after_s if args.overdue else None
    found = ops.OrderFilter(
        provider=args.provider,
        status=args.status,
        needs_review=args.needs_review,
        overdue_after=None if overdue is None else timedelta(seconds=overdue),
        older_than=args.older_than,
        limit=args.limit,
    )
    async with _connect(config) as conn:
        rows = await ops.list_orders(conn, found)
        if args.needs_review:
            ids = [row["id"] for row in rows]
            open_reviews = await ops.reviews_of(conn, ids, open_only=True)
    for row in rows:
        line = dict(row)
        if args.needs_review:
            line["open_reviews"] = [_jsonable(r) for r in open_reviews[row["id"]]]
        _print_line(line)
    return 0


async def _orders_resolve(config: Config, args: argparse.Namespace) -> int:
    if not args.note.strip():
        raise UsageError("--note must say what was done")
    async with _connect(config) as conn:
        try:
            closed = await ops.resolve_reviews(conn, review_ids=args.reviews, note=args.note)
        except ops.NotOpen as exc:
            raise Failure(str(exc)) from None
    for row in closed:
        _print_line(dict(row))
    return 0


async def _notifications_list(config: Config, args: argparse.Namespace) -> int:
    found = ops.NotificationFilter(
        provider=args.provider,
        outcome=args.outcome,
        source=args.source,
        since=args.since,
        limit=args.limit,
    )
    for row in await _read(config, lambda conn: ops.list_notifications(conn, found)):
        print(json.dumps(_note(row), ensure_ascii=False), flush=True)
    return 0


async def _read(
    config: Config, fetch: Callable[[asyncpg.Connection], Awaitable[list[asyncpg.Record]]]
) -> list[asyncpg.Record]:
    """Rows fetched on a connection to the configured database, its schema current."""
    async with _connect(config) as conn:
        return await fetch(conn)


@asynccontextmanager
async def _ledger(config: Config) -> AsyncIterator[tuple[asyncpg.Pool, ledger.Ledger]]:
    """A small pool on the configured database, its schema current, and a ledger on it."""
    async with database.database_url(config.database) as url:
        pool = await database.create_pool(
            url, min_size=1, max_size=4, pgbouncer=config.database.pgbouncer
        )
        try:
            async with pool.acquire() as conn:
                await _require_current(conn)
            yield pool, ledger.Ledger(pool, nonce_window_s=config.gopay.timestamp_tolerance_s)
        finally:
            await pool.close()


async def _replay(config: Config, args: argparse.Namespace) -> int:
    if args.ids and (args.provider or args.since):
        raise UsageError("--provider and --since go with --outcome, not --id")
    from receiver.gateways.registry import build_gateways  # noqa: PLC0415

    gateways = build_gateways(config)
    selection = replay.Selection(
        ids=args.ids or (), outcome=args.outcome, provider=args.provider, since=args.since
    )
    async with _ledger(config) as (pool, book):
        unverifiable = _unverifiable(config)
        try:
            async for rows in replay.select(pool, selection):
                for row in rows:
                    if row["provider"] in unverifiable:
                        _print_line(_not_verified(row, why=unverifiable[row["provider"]]))
                        continue
                    done = await replay.replay(
                        row, gateways=gateways, ledger=book, dry_run=args.dry_run
                    )
                    _print_line(done.as_dict())
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


async def _reconcile(config: Config, args: argparse.Namespace) -> int:
    provider = args.order[0] if args.order else args.provider
    if args.order and args.provider not in (None, provider):
        raise UsageError("--provider and --order name different gateways")
    queriers = {p: q for p, q in build_queriers(config).items() if provider in (None, p)}
    if not queriers:
        key = QUERY_URL_KEYS.get(provider or "", ", ".join(QUERY_URL_KEYS.values()))
        raise ConfigError(source=config.source, key=key, problem="is empty: no order queries")
    async with _ledger(config) as (pool, book), aiohttp.ClientSession() as session:
        reconciler = reconcile.Reconciler(
            pool=pool,
            ledger=book,
            queriers=queriers,
            session=session,
            config=config.reconcile,
            report=lambda report: _print_line(report.as_dict()),
        )
        reports = await _reconcile_pass(reconciler, args)
    if not reports:  # a pass that queried nothing still says so, for cron logs and jq
        summary = {"queried": 0, "providers": sorted(queriers), "detail": "no order is due"}
        _print_line(summary)
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


async def _explain(config: Config, args: argparse.Namespace) -> int:
    from receiver.gateways.registry import build_gateways  # noqa: PLC0415
    from receiver.run import explain  # noqa: PLC0415

    gateways = build_gateways(config)  # the verification keys only, never an API key
    async with _connect(config) as conn:  # checks the schema, never migrates
        try:
            found = await explain.explain(conn, args.id, gateways=gateways)
        except explain.NoSuchNotification as exc:
            raise Failure(str(exc)) from None
    text = explain.render_text(found) if args.text else json.dumps(found, ensure_ascii=False)
    print(text)
    return 0


async def _prune(config: Config, args: argparse.Namespace) -> int:
    from receiver.store import retention  # noqa: PLC0415 - keeps the CLI quick to start

    async with _connect(config) as conn:
        try:
            months = await retention.prune(conn, config.retention, dry_run=args.dry_run)
        except (retention.PruneBusy, retention.ArchiveError) as exc:
            raise Failure(str(exc)) from None
    for month in months:
        _print_line(month.as_dict())
    return 0


if __name__ == "__main__":
    # Run main() of the module receiver.run.cli, not of this __main__ copy: the commands that
    # live in other modules import receiver.run.cli, and the exceptions they raise must be the
    # classes main() catches.
    from receiver.run.cli import main as module_main

    sys.exit(module_main())
