"""The `receiver` command: serve, migrate, orders add|show|list|resolve, notifications list,
replay, reconcile, prune, demo, check-config, --version.

Exit status: 0 success, 2 bad usage or configuration, 1 failure; one clear line on stderr.
This module wires the command line (argparse), picks what configuration each command loads, and
turns what a command raises into that status; the commands live in receiver.run.commands.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from receiver.config import Config, load_config, require_merchants
from receiver.errors import ConfigError, DatabaseUnavailable, NoEmbeddedDatabase
from receiver.gateways.registry import PROVIDERS
from receiver.logging import configure_logging
from receiver.metrics import ListenerError
from receiver.run.commands import config_cmds, notifications, orders, reconcile, replay
from receiver.run.commands.args import MAX_WORKERS, Parser, config_arg, port
from receiver.run.commands.failures import Failure, UsageError
from receiver.run.commands.output import discard_stdout, ensure_stdout, flushed
from receiver.store import database

__all__ = ["Failure", "UsageError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The command line as SPEC.md gives it."""
    parser = Parser(prog="receiver", description="GoPay and Baofoo payment-notification receiver")
    parser.add_argument("--version", action=_PrintVersion, nargs=0, help="print the version")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    serve = sub.add_parser("serve", help="run the service")
    config_arg(serve)
    serve.add_argument(
        "--host", help="address to listen on (default: server.host of the configuration, 127.0.0.1)"
    )
    serve.add_argument(
        "--port",
        type=port,
        help="port to listen on, 0 for any free one (default: server.port, 8080)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help=f"processes sharing the port, 1 to {MAX_WORKERS} (default: 1)",
    )
    config_arg(sub.add_parser("migrate", help="apply sql/ migrations"))
    order_parser = sub.add_parser("orders", help="create or inspect orders")
    osub = order_parser.add_subparsers(dest="orders_command", required=True, parser_class=Parser)
    orders.add_parsers(osub)
    demo = sub.add_parser("demo", help="the whole loop on one machine, with a summary")
    demo.add_argument(
        "--keep",
        action="store_true",
        help="keep the demo's folder (configuration, log, database) and say how to look inside",
    )
    config_arg(
        sub.add_parser(
            "check-config",
            help="validate the configuration and its key files, print what would run",
        )
    )
    from receiver.simulate.command import add_simulate_parser  # noqa: PLC0415 - quick to start

    add_simulate_parser(sub, Parser)
    from receiver.run.events_cli import add_parsers  # noqa: PLC0415

    add_parsers(sub, Parser)
    _add_operations(sub, osub)
    return parser


def _add_operations(
    sub: argparse._SubParsersAction[Parser], osub: argparse._SubParsersAction[Parser]
) -> None:
    """The operators' commands: JSON lines on stdout, for jq."""
    orders.add_operations_parsers(osub)
    notifications.add_parsers(sub)
    replay.add_parser(sub.add_parser("replay", help="re-process stored notifications"))
    reconcile.add_parser(sub.add_parser("reconcile", help="one pass of order queries"))
    notifications.add_explain_parser(sub)
    prune = sub.add_parser("prune", help="apply [retention] now: drop (archive) old months")
    config_arg(prune)
    prune.add_argument("--dry-run", action="store_true", help="say what would go; change nothing")


class _PrintVersion(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, *_args: Any, **_kw: Any) -> None:
        from receiver.run.observe import version  # noqa: PLC0415

        print(f"receiver {version()}")
        parser.exit()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    ensure_stdout()
    try:
        args = build_parser().parse_args(argv)
        return flushed(_run(args))
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


def _describe_unexpected(exc: Exception) -> str:
    """The stderr line for an error no command translated (a closed pipe, a socket, a bug)."""
    if isinstance(exc, BrokenPipeError):
        discard_stdout()
        return "standard output was closed before everything was written"
    if isinstance(exc, OSError):
        return f"{exc.strerror or type(exc).__name__}{f': {exc.filename}' if exc.filename else ''}"
    text = str(exc).splitlines()[0] if str(exc) else ""
    where = "python -X dev -m receiver.run.cli shows where"
    return f"unexpected error: {type(exc).__name__}{': ' + text if text else ''} ({where})"


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
VERIFYING_SECRETS = replay.VERIFYING_SECRETS


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
        return config_cmds.check_config(config, explicit=args.config)
    configure_logging(fmt=config.log.format, level=config.log.level)
    if args.command == "serve":
        from receiver.run.serve import check_listen, check_workers, serve  # noqa: PLC0415

        require_merchants(config)
        check_workers(args.workers)
        check_listen(config, host=args.host, port=args.port)
        return serve(config, host=args.host, port=args.port, workers=args.workers)
    if args.command == "migrate":
        return asyncio.run(config_cmds.migrate(config))
    if args.command in ("events", "deliveries"):
        from receiver.run import events_cli as command  # noqa: PLC0415

        return command.run(args, config)
    return asyncio.run(_command(args)(config, args))


Command = Callable[[Config, argparse.Namespace], Coroutine[Any, Any, int]]


def _command(args: argparse.Namespace) -> Command:
    commands: dict[tuple[str, str | None], Command] = {
        ("orders", "add"): orders.orders_add,
        ("orders", "show"): orders.orders_show,
        ("orders", "list"): orders.orders_list,
        ("orders", "resolve"): orders.orders_resolve,
        ("notifications", "list"): notifications.notifications_list,
        ("replay", None): replay.replay_notifications,
        ("reconcile", None): reconcile.reconcile_orders,
        ("explain", None): notifications.explain_notification,
        ("prune", None): config_cmds.prune,
    }
    return commands[(args.command, getattr(args, f"{args.command}_command", None))]


if __name__ == "__main__":
    # Run main() of the module receiver.run.cli, not of this __main__ copy, as every module that
    # imports receiver.run.cli expects. (The commands raise the classes of
    # receiver.run.commands.failures, one copy whichever module runs as __main__.)
    from receiver.run.cli import main as module_main

    sys.exit(module_main())
