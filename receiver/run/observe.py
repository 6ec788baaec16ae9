"""What the service says about itself: the `starting` line, and the process that serves /metrics.

One process per `receiver serve` observes: the single process, or with `--workers N` the
supervisor. It serves `/metrics` on `[metrics] host, port` (never the gateways' port), logs the
`starting` line once the migrations have run, and refreshes the gauges that come from the
database every ORDERS_REFRESH_S, so that neither a scrape nor a worker queries for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import asyncpg
from aiohttp import web
from prometheus_client import CollectorRegistry

from receiver import metrics
from receiver.config import Config, DatabaseConfig, ForwardDestination
from receiver.errors import DatabaseUnavailable
from receiver.events.forwarder import public_url
from receiver.gateways.registry import GATEWAYS
from receiver.http.app import STARTUP_PATIENCE_S, CleanupContext, background, open_pool
from receiver.http.appkeys import CONFIG, HEALTH, MIGRATED, POOL
from receiver.logging import get_logger
from receiver.store import database

log = get_logger(__name__)

T = TypeVar("T")

ORDERS_REFRESH_S = 30.0
REFRESH_TIMEOUT_S = 10.0
EMBEDDED_WARNING = "embedded PostgreSQL: for trying the service, not for production"


def version() -> str:
    """This receiver's version: the installed package's, else the source tree's."""
    from importlib import metadata  # noqa: PLC0415 - only start-up and --version need it

    try:
        return metadata.version("receiver")
    except metadata.PackageNotFoundError:
        from receiver import __version__  # noqa: PLC0415

        return __version__


def reconciler_on(config: Config) -> bool:
    """serve reconciles when enabled and at least one gateway's order query is configured."""
    return config.reconcile.enabled and bool(config.gopay.api_url or config.baofoo.query_url)


def describe_database(config: DatabaseConfig) -> dict[str, Any]:
    """The database for an operator: embedded with its directory, or host and name, no secret."""
    if not config.url:
        return {"embedded": True, "data_dir": str(config.data_dir.resolve())}
    parts = urlsplit(config.url)
    query = {key: values[0] for key, values in parse_qs(parts.query).items()}
    host = parts.hostname or query.get("host", "localhost")
    name = parts.path.lstrip("/") or query.get("dbname") or parts.username or ""
    return {"host": host, "port": _port(parts.netloc, query), "name": name}


def _port(netloc: str, query: dict[str, str]) -> int | str:
    host_port = netloc.rpartition("@")[2]
    if host_port.startswith("["):  # [IPv6]:port
        host_port = host_port.rpartition("]")[2]
    text = host_port.partition(":")[2] or query.get("port", "5432")
    return int(text) if text.isdigit() else text  # libpq's to judge; shown as written


def summary(config: Config) -> dict[str, Any]:
    """What `serve` would run with this configuration (no secrets)."""
    warning = {} if config.database.url else {"warning": EMBEDDED_WARNING}
    return warning | {
        "version": version(),
        "config": config.source,
        "database": describe_database(config.database),
        "merchants": {g.provider: g.merchant_labels(config) for g in GATEWAYS},
        "reconciler": reconciler_on(config),
        "metrics": metrics.listen_address(config.metrics),
        "forward": [_destination(d) for d in config.forward],
    }


def _destination(d: ForwardDestination) -> dict[str, Any]:
    """A forwarding destination as the operator checks it: where, which events; no secret."""
    return {
        "name": d.name,
        "url": public_url(d.url),
        "types": list(d.types),
        "providers": list(d.providers),
    }


def log_starting(config: Config, *, migrations_applied: list[str]) -> None:
    """The one `starting` line; a warning when an embedded database serves."""
    fields = summary(config) | {"migrations_applied": migrations_applied}
    (log.warning if "warning" in fields else log.info)("starting", **fields)


async def watch_orders(
    pool: asyncpg.Pool,
    watch: metrics.OrdersWatch,
    *,
    config: Config,
    health: database.Health,
    interval_s: float = ORDERS_REFRESH_S,
) -> None:
    """Refresh the database-derived gauges now and every `interval_s`, reporting to `health`."""
    while True:
        try:
            with database.guarded(health):
                async with asyncio.timeout(REFRESH_TIMEOUT_S), pool.acquire() as conn:
                    await watch.refresh(conn, overdue_after_s=config.reconcile.first_after_s)
        except DatabaseUnavailable:
            pass  # reported to health; the next refresh tries again
        except asyncpg.PostgresError as exc:
            health.worked()
            log.warning("orders_watch_failed", reason=type(exc).__name__)
        await asyncio.sleep(interval_s)


# --- one process ---------------------------------------------------------------------------


@contextlib.contextmanager
def observing_process(config: Config) -> Iterator[CleanupContext]:
    """/metrics for this process alone; yields the cleanup context to add to its application."""
    watch = metrics.OrdersWatch(build_version=version())
    registry = metrics.process_registry(watch)
    listener = _listener(config, registry)
    try:
        yield _observer_ctx(watch, listener)
    finally:
        registry.unregister(watch)


def _listener(config: Config, registry: CollectorRegistry) -> metrics.Listener:
    return metrics.Listener(
        config.metrics, registry, header_timeout_s=config.server.header_timeout_s
    )


def _observer_ctx(watch: metrics.OrdersWatch, listener: metrics.Listener) -> CleanupContext:
    async def observe(app: web.Application) -> None:
        """After the database context: the starting line, then the orders watch."""
        config = app[CONFIG]
        log_starting(config, migrations_applied=app[MIGRATED])
        await watch_orders(app[POOL], watch, config=config, health=app[HEALTH])

    watching = contextlib.asynccontextmanager(background(observe))

    async def observer_ctx(app: web.Application) -> AsyncIterator[None]:
        """/metrics on this process's event loop, and the watch beside it."""
        await listener.start()
        try:
            async with watching(app):
                yield
        finally:
            await listener.stop()

    return observer_ctx


# --- the supervisor of workers ------------------------------------------------------------


@contextlib.contextmanager
def observing_workers(config: Config, *, url: str, path: str) -> Iterator[None]:
    """/metrics with every worker's figures (files in `path`); migrates before any worker runs.

    `config` is the operator's (an empty database URL means embedded); `url` is where the
    database is now.
    """
    watch = metrics.OrdersWatch(build_version=version())
    listener = _listener(config, metrics.workers_registry(path, watch))
    loop = _LoopThread("receiver-observer")
    pool: asyncpg.Pool | None = None
    try:
        loop.call(listener.start())
        pool = loop.call(_open_pool(url, pgbouncer=config.database.pgbouncer))
        log_starting(config, migrations_applied=loop.call(_migrate(pool)))
        health = database.Health()
        health.worked()
        loop.spawn(watch_orders(pool, watch, config=config, health=health))
        yield
    finally:
        loop.cancel_tasks()
        if pool is not None:
            loop.call(pool.close())
        loop.call(listener.stop())
        loop.stop()


async def _open_pool(url: str, *, pgbouncer: bool) -> asyncpg.Pool:
    return await open_pool(
        url, min_size=1, max_size=1, patience_s=STARTUP_PATIENCE_S, pgbouncer=pgbouncer
    )


async def _migrate(pool: asyncpg.Pool) -> list[str]:
    return await database.wait_and_migrate(pool, patience_s=STARTUP_PATIENCE_S)


@dataclass
class _LoopThread:
    """An event loop on a thread of its own, beside the supervisor's synchronous main loop."""

    name: str

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=self.name, daemon=True)
        self._thread.start()
        self._tasks: list[asyncio.Task[Any]] = []

    def call(self, work: Coroutine[Any, Any, T]) -> T:
        """Run `work` on the thread's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` on the thread's loop until `stop`."""
        self._loop.call_soon_threadsafe(lambda: self._tasks.append(self._loop.create_task(work)))

    def cancel_tasks(self) -> None:
        """Cancel what `spawn` started and wait for it to finish."""

        async def cancel_all() -> None:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        self.call(cancel_all())

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)
        self._loop.close()
