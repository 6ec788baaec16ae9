"""The aiohttp application: routes, middleware and resource lifetimes."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from typing import Any

import aiohttp
import asyncpg
from aiohttp import HttpVersion11, hdrs, web

from receiver.config import Config, DatabaseConfig
from receiver.errors import DatabaseRefused, DatabaseUnavailable
from receiver.events.forwarder import forwarding
from receiver.gateways import Gateway, OrderQuerier
from receiver.gateways.queriers import build_queriers
from receiver.gateways.registry import build_gateways
from receiver.http.aiohttp_private import forget_interim_reply
from receiver.http.appkeys import (
    CONFIG,
    GATEWAYS,
    HEALTH,
    IN_FLIGHT,
    LEDGER,
    MIGRATED,
    POOL,
    QUERIERS,
    UNVERIFIED,
    InFlight,
)
from receiver.http.handlers import (
    NOTIFY_PREFIX,
    NOTIFY_ROUTE,
    healthz,
    notify,
    unknown_gateway,
)
from receiver.http.replies import SERVER_NAME, Refusal, refuse
from receiver.http.unverified import UnverifiedLimiter
from receiver.logging import bind_request_id, get_logger
from receiver.sources import reconcile
from receiver.store import database, retention
from receiver.store.ledger import Ledger

log = get_logger(__name__)

STARTUP_PATIENCE_S = 30.0
READY_TIMEOUT_S = 2.0
NONCE_PRUNE_INTERVAL_S = 300.0
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

# Request ids: a random prefix per process and a counter, as unique as uuid4 across restarts and
# workers, without a urandom call per request.
_ID_PREFIX = uuid.uuid4().hex[:16]
_id_counter = itertools.count(1)


def new_request_id() -> str:
    """A fresh request id: 16 random hex digits for this process, a dash, a counter."""
    return f"{_ID_PREFIX}-{next(_id_counter):x}"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(
    config: Config,
    *,
    gateways: Mapping[str, Gateway] | None = None,
    queriers: Mapping[str, OrderQuerier] | None = None,
) -> web.Application:
    """The receiver as an aiohttp application; raises ConfigError for a bad configuration."""
    app = web.Application()
    app[CONFIG] = config
    app[GATEWAYS] = dict(gateways) if gateways is not None else build_gateways(config)
    app[QUERIERS] = dict(queriers) if queriers is not None else build_queriers(config)
    app[UNVERIFIED] = UnverifiedLimiter(config.server.unverified_per_minute)
    in_flight = app[IN_FLIGHT] = InFlight()
    app.cleanup_ctx.append(database_ctx)
    app.cleanup_ctx.append(nonce_pruner_ctx)
    app.cleanup_ctx.append(reconciler_ctx)
    app.cleanup_ctx.append(forwarder_ctx)
    app.cleanup_ctx.append(retention_ctx)
    app.on_response_prepare.append(_server_header)
    app.router.add_route(
        "*",
        "/notify/{provider}",
        in_context(notify, in_flight),
        expect_handler=expect_continue,
        name=NOTIFY_ROUTE,
    )
    # Anything else under /notify/ (a trailing slash, a second segment, nothing at all).
    app.router.add_route("*", NOTIFY_PREFIX + "{rest:.*}", in_context(unknown_gateway, in_flight))
    app.router.add_get("/healthz", in_context(healthz, in_flight))
    app.router.add_get("/readyz", in_context(readyz, in_flight))
    return app


def in_context(handler: Handler, in_flight: InFlight) -> Handler:
    """`handler` with a request id on its log lines and its reply, counted in `in_flight`, and
    any unexpected error turned into a plain 503.

    A wrapper rather than aiohttp middleware: each middleware adds its own layer (and aiohttp
    one more) to every request, and this runs on every notification.
    """

    async def handle_in_context(request: web.Request) -> web.StreamResponse:
        in_flight.count += 1
        in_flight.idle.clear()
        given = request.headers.get("X-Request-Id")
        request_id = given if given and _REQUEST_ID.match(given) else new_request_id()
        bind_request_id(request_id)
        try:
            response = await handler(request)
        except web.HTTPException:
            raise
        except Exception:
            # A bug must not become a 500 with a traceback, nor an acknowledgement: 503 makes
            # the gateway retry, and the traceback goes to the operator's log only.
            log.exception("unhandled_error", path=request.path)
            response = _unhandled_reply(request)
        finally:
            in_flight.count -= 1
            if not in_flight.count:
                in_flight.idle.set()
        response.headers["X-Request-Id"] = request_id
        if in_flight.draining:
            response.force_close()  # a keep-alive connection takes no more requests
        return response

    return handle_in_context


def _unhandled_reply(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAYS].get(request.match_info.get("provider", ""))
    if gateway is None:
        return refuse(None, None, Refusal.DATABASE_UNAVAILABLE)
    return refuse(gateway.provider, gateway.dialect, Refusal.DATABASE_UNAVAILABLE)


async def _server_header(_request: web.Request, resp: web.StreamResponse) -> None:
    resp.headers[hdrs.SERVER] = SERVER_NAME


async def expect_continue(request: web.Request) -> None:
    """Answer `Expect: 100-continue`; leave any other expectation to the handler, which refuses
    it in the gateway's dialect (aiohttp's own 417 quotes the header back)."""
    if request.version == HttpVersion11 and _expects_continue(request):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        forget_interim_reply(request)


def _expects_continue(request: web.Request) -> bool:
    return request.headers.get(hdrs.EXPECT, "").lower() == "100-continue"


async def database_ctx(app: web.Application) -> AsyncIterator[None]:
    """The database (embedded when no URL is configured), its pool, the schema, the ledger."""
    config = app[CONFIG]
    async with database.database_url(config.database, create=True) as url:
        pool = await open_pool(
            url,
            min_size=config.database.pool_min,
            max_size=config.database.pool_max,
            patience_s=STARTUP_PATIENCE_S,
            pgbouncer=config.database.pgbouncer,
        )
        try:
            app[MIGRATED] = await database.wait_and_migrate(pool, patience_s=STARTUP_PATIENCE_S)
            app[POOL] = pool
            health = app[HEALTH] = database.Health()
            health.worked()
            app[LEDGER] = Ledger(
                pool,
                nonce_window_s=config.gopay.timestamp_tolerance_s,
                batch_max=config.ledger.batch_max,
                batch_concurrency=config.ledger.batch_concurrency,
                health=health,
            )
            yield
        finally:
            await pool.close()


async def open_pool(
    url: str, *, min_size: int, max_size: int, patience_s: float, pgbouncer: bool = False
) -> asyncpg.Pool:
    """A pool on `url`, waiting up to `patience_s` for the database to answer.

    The wait is logged at once and then at doubling intervals (an outage of the whole patience
    is a handful of lines, not one a second), each line saying where and for how much longer.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience_s
    next_log_at, gap = loop.time(), WAITING_LOG_FIRST_GAP_S
    while True:
        try:
            return await database.create_pool(
                url, min_size=min_size, max_size=max_size, pgbouncer=pgbouncer
            )
        except DatabaseRefused:
            raise  # no such database or role: waiting will not make one
        except DatabaseUnavailable as exc:
            now = loop.time()
            if now >= deadline:
                raise
            if now >= next_log_at:
                _log_waiting(url, reason=str(exc), left_s=deadline - now)
                next_log_at, gap = now + gap, gap * 2
            await asyncio.sleep(1.0)


WAITING_LOG_FIRST_GAP_S = 2.0


def _log_waiting(url: str, *, reason: str, left_s: float) -> None:
    from receiver.run.observe import describe_database  # noqa: PLC0415 - observe imports this module

    where = describe_database(DatabaseConfig(url=url))
    log.warning(
        "database_waiting",
        address=f"{where['host']}:{where['port']}",
        reason=reason,
        giving_up_in_s=round(left_s),
        message=f"giving up in {round(left_s)} s",
    )


CleanupContext = Callable[[web.Application], AsyncIterator[None]]


def background(run: Callable[[web.Application], Coroutine[Any, Any, None]]) -> CleanupContext:
    """A cleanup context running `run(app)` as a task for the app's life, cancelled at once
    on shutdown (background work never delays it)."""

    async def background_ctx(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(run(app))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return background_ctx


async def _prune_nonces(app: web.Application) -> None:
    """Prune old GoPay nonces in the background so the table stays small."""
    ledger = app[LEDGER]
    while True:
        try:
            pruned = await ledger.prune_nonces()
            if pruned:
                log.info("nonces_pruned", count=pruned)
        except DatabaseUnavailable as exc:
            log.warning("nonces_prune_failed", reason=str(exc))
        await asyncio.sleep(NONCE_PRUNE_INTERVAL_S)


nonce_pruner_ctx = background(_prune_nonces)


async def _retention(app: web.Application) -> None:
    """Partitions ahead and `[retention]` applied once a day (see store/retention.py)."""
    await retention.prune_daily(app[POOL], app[CONFIG].retention, log=log)


retention_ctx = background(_retention)


def reconciler_runs(app: web.Application) -> bool:
    """True when serve reconciles: enabled, and some gateway has an order-query client."""
    return app[CONFIG].reconcile.enabled and bool(app[QUERIERS])


async def _reconcile(app: web.Application) -> None:
    """Query overdue orders in the background (see reconcile.py), while serve runs."""
    if not reconciler_runs(app):
        return
    queriers: dict[str, OrderQuerier] = app[QUERIERS]
    async with aiohttp.ClientSession() as session:
        reconciler = reconcile.Reconciler(
            pool=app[POOL],
            ledger=app[LEDGER],
            queriers=queriers,
            session=session,
            config=app[CONFIG].reconcile,
            report=reconcile.log_report,
        )
        await reconciler.run_forever()


reconciler_ctx = background(_reconcile)


async def forwarder_ctx(app: web.Application) -> AsyncIterator[None]:
    """Forward order events to the `[[forward]]` destinations while serve runs."""
    async with forwarding(app[POOL], app[CONFIG].forward):
        yield


async def readyz(request: web.Request) -> web.Response:
    """200 when the database answers and the schema is current, else 503."""
    health = request.app[HEALTH]
    try:
        with database.guarded(health):
            async with asyncio.timeout(READY_TIMEOUT_S), request.app[POOL].acquire() as conn:
                current = await database.schema_is_current(conn)
    except DatabaseUnavailable as exc:
        health.unavailable(exc)  # reported already when guarded raised it: logs nothing more
        return web.json_response({"status": "database unavailable"}, status=503)
    if not current:
        return web.json_response({"status": "schema not current"}, status=503)
    return web.json_response({"status": "ready"})
