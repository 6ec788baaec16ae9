"""`receiver simulate serve|pay`: run the stand-in gateway, hand it payments.

`serve` prints the receiver's configuration for talking to it, then one JSON line per event
(payment held, order query answered, notification attempt). `pay` posts a payment to a running
`serve` through its control API and prints what it holds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from receiver.core.notification import Status, parse_money
from receiver.events.signing import secret_key
from receiver.gateways.baofoo.notify import PROVIDER as BAOFOO
from receiver.gateways.gopay.notify import PROVIDER as GOPAY
from receiver.simulate.downstream import (
    StandInDownstream,
    forward_snippet,
    new_secret,
    serving_downstream,
)
from receiver.simulate.gateway import Event, Fault, GoPayClient, StandInGateway
from receiver.simulate.keys import SimulatorKeys, config_snippet, load_or_create
from receiver.simulate.sender import ATTEMPT_TIMEOUT_S
from receiver.simulate.server import PAYMENTS_PATH, serving
from receiver.simulate.signers import GoPaySimulator

DEFAULT_PORT = 8090
DEFAULT_DOWNSTREAM_PORT = 8091
DEFAULT_GATEWAY = f"http://127.0.0.1:{DEFAULT_PORT}"
DEFAULT_GOPAY_MERCHANT = "100001"
DEFAULT_BAOFOO_MERCHANT = "100000178/10000001"
PAY_TIMEOUT_S = 10.0
PROVIDERS = (GOPAY, BAOFOO)


class UsageError(Exception):
    """Bad usage of `receiver simulate` (exit 2)."""


class Failure(Exception):
    """`receiver simulate` could not do its work (exit 1)."""


def add_simulate_parser(sub: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    """Add `simulate serve` and `simulate pay` to the `receiver` command line."""
    simulate = sub.add_parser("simulate", help="the stand-in gateway for trying an integration")
    ssub = simulate.add_subparsers(
        dest="simulate_command", required=True, parser_class=parser_class
    )
    serve = ssub.add_parser("serve", help="answer order queries, send notifications")
    serve.add_argument("--host", default="127.0.0.1", help="listen here (default: 127.0.0.1)")
    serve.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"listen here (default: {DEFAULT_PORT})"
    )
    serve.add_argument(
        "--keys-dir",
        default="simulate-keys",
        help="read or generate keys here (default: simulate-keys)",
    )
    serve.add_argument(
        "--gopay-merchant",
        action="append",
        metavar="MCHID",
        help=f"a GoPay merchant it serves, repeatable (default: {DEFAULT_GOPAY_MERCHANT})",
    )
    serve.add_argument(
        "--baofoo-merchant",
        action="append",
        metavar="MEMBER/TERMINAL",
        help=f"a Baofoo merchant it serves, repeatable (default: {DEFAULT_BAOFOO_MERCHANT})",
    )
    serve.add_argument(
        "--fault",
        choices=[f.value for f in Fault],
        default=Fault.NONE.value,
        help="misbehave this way when asked (default: none)",
    )
    down = ssub.add_parser(
        "downstream", help="a stand-in downstream service: receive and verify forwarded events"
    )
    down.add_argument("--host", default="127.0.0.1")
    down.add_argument("--port", type=int, default=DEFAULT_DOWNSTREAM_PORT)
    down.add_argument("--secret", help="whsec_... (default: a new one, printed)")
    down.add_argument(
        "--fail-first", type=int, default=0, metavar="N", help="answer 500 to N attempts per event"
    )
    pay = ssub.add_parser("pay", help="hand a running stand-in gateway a payment")
    pay.add_argument(
        "--gateway",
        default=DEFAULT_GATEWAY,
        help=f"the running `simulate serve` (default: {DEFAULT_GATEWAY})",
    )
    pay.add_argument("--provider", required=True, choices=PROVIDERS)
    pay.add_argument("--merchant", required=True, help="GoPay mchid or Baofoo MemberID")
    pay.add_argument("--terminal", help="Baofoo TerminalID (when the member has several)")
    pay.add_argument("--out-trade-no", required=True)
    pay.add_argument("--amount", required=True, help="the order amount, e.g. 100.00")
    pay.add_argument("--paid-amount", help="what was actually paid, when not the amount")
    pay.add_argument("--currency", default="CNY", help="(default: CNY)")
    pay.add_argument(
        "--status",
        choices=[s.value for s in Status],
        default="paid",
        help="what the gateway says of the payment (default: paid)",
    )
    pay.add_argument("--channel", help="GoPay channel (default gopay_banktransfer)")
    pay.add_argument("--notify-url", help="the receiver's notify URL; omitted: no notification")
    pay.add_argument("--lose", action="store_true", help="paid, but the notification is lost")
    pay.add_argument("--time-scale", type=float, default=1.0, help="0.001: 3 h of retries in 11 s")
    pay.add_argument(
        "--wait",
        action="store_true",
        help="print the receiver's reply to the first notification and what it means",
    )


def run_simulate(args: argparse.Namespace) -> int:
    """Run `receiver simulate serve` or `receiver simulate pay`; one stderr line on failure."""
    # Errors are reported here: under `python -m receiver.run.cli` this module's import of
    # receiver.run.cli would be a second copy, whose exception classes main() would not catch.
    try:
        if args.simulate_command == "serve":
            return _run_serve(args)
        if args.simulate_command == "downstream":
            return _run_downstream(args)
        return asyncio.run(_pay(_pay_request(args), gateway=args.gateway.rstrip("/")))
    except UsageError as exc:
        return _fail(2, f"usage: {exc} (see receiver simulate --help)")
    except Failure as exc:
        return _fail(1, str(exc))


def _fail(code: int, line: str) -> int:
    print(f"receiver: {line}", file=sys.stderr)
    return code


# --- serve --------------------------------------------------------------------------------------


def _run_serve(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise UsageError("--port must be a port number (0-65535)")
    baofoo = [_member_terminal(m) for m in args.baofoo_merchant or [DEFAULT_BAOFOO_MERCHANT]]
    gopay = args.gopay_merchant or [DEFAULT_GOPAY_MERCHANT]
    keys = _keys(args.keys_dir)
    client = GoPayClient(public_key=keys.merchant.public_key(), api_key=keys.api_key)
    gateway = StandInGateway(
        platform=GoPaySimulator(keys.platform),
        gopay_clients={mchid: client for mchid in gopay},
        baofoo_keys={pair: keys.md5_key for pair in baofoo},
        on_event=_print_event,
    )
    gateway.fault = Fault(args.fault)

    def announce(base_url: str) -> None:
        snippet = config_snippet(
            keys, base_url=base_url, gopay_merchants=gopay, baofoo_merchants=baofoo
        )
        _print(f"# receiver configuration for the stand-in gateway at {base_url}\n{snippet}")
        _print(f"# listening on {base_url}; Ctrl-C stops")

    return asyncio.run(_serve(gateway, host=args.host, port=args.port, announce=announce))


def _keys(folder: str) -> SimulatorKeys:
    try:
        return load_or_create(Path(folder))
    except OSError as exc:
        raise UsageError(f"--keys-dir {folder}: {exc.strerror or type(exc).__name__}") from None


def _member_terminal(text: str) -> tuple[str, str]:
    member, sep, terminal = text.partition("/")
    if not (sep and member and terminal):
        raise UsageError(f"--baofoo-merchant {text!r}: expected MEMBER/TERMINAL")
    return member, terminal


def _print_event(event: Event) -> None:
    _print(json.dumps(dict(event), ensure_ascii=False))


def _print(text: str) -> None:
    try:
        print(text, flush=True)
    except OSError:
        # stdout closed (`| head`): keep serving silently; devnull spares the flush at exit.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115


async def _serve(
    gateway: StandInGateway, *, host: str, port: int, announce: Callable[[str], None]
) -> int:
    listening = False
    try:
        async with serving(gateway, host=host, port=port) as base_url:
            listening = True
            announce(base_url)
            await asyncio.Event().wait()  # until interrupted
    except OSError as exc:
        if listening:
            raise
        raise Failure(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return 0


# --- downstream ---------------------------------------------------------------------------------


def _run_downstream(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise UsageError("--port must be a port number (0-65535)")
    if args.fail_first < 0:
        raise UsageError("--fail-first must be 0 or more")
    secret = args.secret or new_secret()
    try:
        secret_key(secret)
    except ValueError:
        raise UsageError('--secret must be "whsec_" followed by base64') from None
    downstream = StandInDownstream(
        secret=secret,
        fail_first=args.fail_first,
        on_report=lambda report: _print(json.dumps(report, ensure_ascii=False)),
    )
    return asyncio.run(_serve_downstream(downstream, host=args.host, port=args.port))


async def _serve_downstream(downstream: StandInDownstream, *, host: str, port: int) -> int:
    try:
        async with serving_downstream(downstream, host=host, port=port) as url:
            _print(
                f"# receiver configuration for the stand-in downstream service\n"
                f"{forward_snippet(url, downstream.secret)}"
            )
            _print(f"# listening on {url}; Ctrl-C stops")
            await asyncio.Event().wait()  # until interrupted
    except OSError as exc:
        raise Failure(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return 0


# --- pay ----------------------------------------------------------------------------------------


def _pay_request(args: argparse.Namespace) -> dict[str, Any]:
    """The control-API body; bad amounts and time scales are usage errors before any network."""
    for option, value in (("--amount", args.amount), ("--paid-amount", args.paid_amount)):
        if value is not None:
            _check_money(option, value)
    if not args.time_scale > 0:
        raise UsageError("--time-scale must be greater than zero")
    return {
        "provider": args.provider,
        "merchant": args.merchant,
        "terminal": args.terminal,
        "out_trade_no": args.out_trade_no,
        "amount": args.amount,
        "paid_amount": args.paid_amount,
        "currency": args.currency.upper(),
        "status": args.status,
        "channel": args.channel,
        "notify_url": args.notify_url,
        "lose": args.lose,
        "time_scale": args.time_scale,
        "wait": args.wait,
    }


def _check_money(option: str, value: str) -> None:
    try:
        minor = parse_money(value)
    except ValueError as exc:
        raise UsageError(f"{option} {value!r}: {exc}") from None
    if minor <= 0:
        raise UsageError(f"{option} must be greater than zero")


async def _pay(body: dict[str, Any], *, gateway: str) -> int:
    url = gateway + PAYMENTS_PATH
    # With --wait the stand-in answers after the receiver did (one attempt, ATTEMPT_TIMEOUT_S).
    timeout = aiohttp.ClientTimeout(total=PAY_TIMEOUT_S + ATTEMPT_TIMEOUT_S)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(url, json=body) as resp,
        ):
            status, text = resp.status, await resp.text()
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        raise Failure(f"cannot reach the stand-in gateway at {gateway}: {exc}") from None
    reply = _json_or_none(text)
    if status == 400 and reply is not None and "error" in reply:
        raise UsageError(str(reply["error"]))
    if status != 201 or reply is None:
        raise Failure(f"the stand-in gateway at {gateway} answered HTTP {status}")
    json.dump(reply, sys.stdout, ensure_ascii=False)
    print()
    return 0


def _json_or_none(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
