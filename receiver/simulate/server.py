"""The stand-in gateway over HTTP: both gateways' order-query endpoints, and a small control API
(`/simulate/...`) through which `receiver simulate pay` hands it payments to hold and notify.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from receiver.core.notification import Status, parse_money
from receiver.gateways.asking import MAX_REPLY_BYTES
from receiver.simulate.gateway import Answer, Fault, StandInGateway
from receiver.simulate.payments import Payment
from receiver.simulate.sender import Attempt

GOPAY_QUERY_PATH = "/pay/orderquery"
BAOFOO_QUERY_PATH = "/order/query"
PAYMENTS_PATH = "/simulate/payments"
FAULT_PATH = "/simulate/fault"


@dataclass
class Background:
    """The gateway's own outgoing work: a client session, deliveries in flight, held replies."""

    session: aiohttp.ClientSession | None = None
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    released: asyncio.Event = field(default_factory=asyncio.Event)


GATEWAY = web.AppKey("gateway", StandInGateway)
BACKGROUND = web.AppKey("background", Background)


def create_gateway_app(gateway: StandInGateway) -> web.Application:
    """The stand-in gateway's web application."""
    app = web.Application(client_max_size=MAX_REPLY_BYTES)
    app[GATEWAY] = gateway
    app[BACKGROUND] = Background()
    app.router.add_post(GOPAY_QUERY_PATH, _gopay_query)
    app.router.add_post(BAOFOO_QUERY_PATH, _baofoo_query)
    app.router.add_post(PAYMENTS_PATH, _add_payment)
    app.router.add_get(PAYMENTS_PATH, _list_payments)
    app.router.add_post(FAULT_PATH, _set_fault)
    app.cleanup_ctx.append(_background)
    app.on_shutdown.append(_release_held)
    return app


@asynccontextmanager
async def serving(
    gateway: StandInGateway, *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """Run the stand-in gateway on a socket (port 0: a free one); yields its base URL."""
    runner = web.AppRunner(create_gateway_app(gateway), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound_host, bound_port = runner.addresses[0][:2]
        url_host = f"[{bound_host}]" if ":" in bound_host else bound_host
        yield f"http://{url_host}:{bound_port}"
    finally:
        await runner.cleanup()


async def _background(app: web.Application) -> AsyncIterator[None]:
    background = app[BACKGROUND]
    async with aiohttp.ClientSession() as session:
        background.session = session
        yield
        for task in background.tasks:
            task.cancel()
        await asyncio.gather(*background.tasks, return_exceptions=True)


async def _release_held(app: web.Application) -> None:
    app[BACKGROUND].released.set()


def _response(answer: Answer) -> web.Response:
    return web.Response(status=answer.status, body=answer.body, headers=dict(answer.headers))


async def _faulty(request: web.Request, provider: str) -> web.Response | None:
    gateway = request.app[GATEWAY]
    if gateway.fault is Fault.HANG:
        await request.app[BACKGROUND].released.wait()  # until the gateway shuts down
        return web.Response(status=503, text="shutting down")
    answer = gateway.fault_answer(provider)
    return None if answer is None else _response(answer)


async def _gopay_query(request: web.Request) -> web.Response:
    faulty = await _faulty(request, "gopay")
    if faulty is not None:
        return faulty
    answer = request.app[GATEWAY].gopay_query(
        path=request.rel_url.raw_path,
        query=request.rel_url.raw_query_string,
        headers=request.headers,
        body=await request.read(),
    )
    return _response(answer)


async def _baofoo_query(request: web.Request) -> web.Response:
    faulty = await _faulty(request, "baofoo")
    if faulty is not None:
        return faulty
    form = await request.post()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    return _response(request.app[GATEWAY].baofoo_query(fields))


# --- the control API ----------------------------------------------------------------------------


async def _add_payment(request: web.Request) -> web.Response:
    gateway, background = request.app[GATEWAY], request.app[BACKGROUND]
    try:
        order = parse_pay(await _json_body(request), gateway)
    except ValueError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    gateway.hold(order.payment)
    notification = "none"
    if order.payment.status is not Status.PENDING and order.notify_url:
        notification = "lost" if order.lose else "sending"
    first: asyncio.Future[Attempt] = asyncio.get_running_loop().create_future()
    if notification == "sending" and background.session is not None:
        sending = gateway.send(
            background.session,
            order.payment,
            notify_url=order.notify_url,
            time_scale=order.time_scale,
            on_attempt=lambda attempt: _settle(first, attempt),
        )
        task = asyncio.create_task(sending)
        background.tasks.add(task)
        task.add_done_callback(background.tasks.discard)
    body: dict[str, Any] = {"payment": order.payment.as_json(), "notification": notification}
    if order.wait and notification == "sending":
        # The first attempt's reply: a refused one is retried on the schedule meanwhile.
        body["first_attempt"] = attempt_json(await first)
    return web.json_response(body, status=201)


def _settle(first: asyncio.Future[Attempt], attempt: Attempt) -> None:
    if not first.done():
        first.set_result(attempt)


def attempt_json(attempt: Attempt) -> dict[str, Any]:
    """What the receiver answered one attempt, and what the gateway makes of it."""
    outcome = "acknowledged" if attempt.acknowledged else "refused: the gateway will retry"
    if attempt.status is None:
        outcome = "no reply: the gateway will retry"
    return {
        "attempt": attempt.number,
        "status": attempt.status,
        "reply": attempt.reply,
        "acknowledged": attempt.acknowledged,
        "outcome": outcome,
    }


async def _list_payments(request: web.Request) -> web.Response:
    payments = [p.as_json() for p in request.app[GATEWAY].payments.values()]
    return web.json_response({"payments": payments})


async def _set_fault(request: web.Request) -> web.Response:
    try:
        data = await _json_body(request)
        fault = Fault(str(data.get("fault")))
    except ValueError:
        choices = ", ".join(f.value for f in Fault)
        return web.json_response({"error": f"fault must be one of {choices}"}, status=400)
    request.app[GATEWAY].fault = fault
    return web.json_response({"fault": fault.value})


async def _json_body(request: web.Request) -> Mapping[str, Any]:
    try:
        data = json.loads(await request.read())
    except ValueError:
        raise ValueError("the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise ValueError("the body must be a JSON object")
    return data


@dataclass(frozen=True, slots=True)
class PayOrder:
    """A payment to hold, and where (and whether) to notify it."""

    payment: Payment
    notify_url: str = ""
    lose: bool = False
    time_scale: float = 1.0
    wait: bool = False  # reply only once the receiver answered the first attempt


def parse_pay(data: Mapping[str, Any], gateway: StandInGateway) -> PayOrder:
    """Read a control-API payment; ValueError says which field is wrong."""
    provider = _text(data, "provider")
    merchant = _text(data, "merchant")
    if provider == "gopay":
        if merchant not in gateway.gopay_clients:
            raise ValueError(f"GoPay merchant {merchant} is not configured in the stand-in")
        terminal = ""
    elif provider == "baofoo":
        terminal = _baofoo_terminal(gateway, merchant, data.get("terminal"))
    else:
        raise ValueError("provider must be gopay or baofoo")
    payment = Payment(
        provider=provider,
        merchant_id=merchant,
        out_trade_no=_text(data, "out_trade_no"),
        amount_minor=_money(data, "amount"),
        paid_minor=None if data.get("paid_amount") is None else _money(data, "paid_amount"),
        currency=str(data.get("currency") or "CNY"),
        status=_status(data.get("status", "paid")),
        channel=str(data.get("channel") or ""),
        terminal_id=terminal,
    )
    return PayOrder(
        payment=payment,
        notify_url=str(data.get("notify_url") or ""),
        lose=data.get("lose") is True,
        wait=data.get("wait") is True,
        time_scale=_time_scale(data.get("time_scale", 1.0)),
    )


def _text(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string")
    return value


def _money(data: Mapping[str, Any], name: str) -> int:
    try:
        minor = parse_money(_text(data, name))
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    if minor <= 0:
        raise ValueError(f"{name} must be greater than zero")
    return minor


def _status(value: object) -> Status:
    try:
        return Status(str(value))
    except ValueError:
        raise ValueError("status must be paid, failed, closed or pending") from None


def _time_scale(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError("time_scale must be a number greater than zero")
    return float(value)


def _baofoo_terminal(gateway: StandInGateway, member: str, given: object) -> str:
    terminals = [t for (m, t) in gateway.baofoo_keys if m == member]
    if isinstance(given, str) and given:
        if given not in terminals:
            raise ValueError(f"Baofoo terminal {member}/{given} is not configured in the stand-in")
        return given
    if len(terminals) != 1:
        raise ValueError(f"Baofoo MemberID {member}: give terminal (configured: {len(terminals)})")
    return terminals[0]
