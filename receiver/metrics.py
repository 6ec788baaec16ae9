"""Prometheus metrics (SPEC.md "Metrics"), each named once here.

Who counts what: the ledger counts each notification it committed (so the counters agree with the
`notifications` table), the handlers time each reply and count the refusals (the connection
counts the parser's), database.Health sets `receiver_database_up`. The gauges that come from
the database (`receiver_orders_overdue`, `receiver_orders_needs_review`) and
`receiver_build_info` belong to the one process that serves `/metrics`: it refreshes them on an
interval (`OrdersWatch`), so a scrape never queries the database.

With `--workers N` the supervisor serves `/metrics` and the workers count in prometheus_client's
multiprocess mode: the supervisor makes a fresh directory per run (`multiprocess_dir`) and sets
PROMETHEUS_MULTIPROC_DIR before it spawns anybody; each scrape merges the workers' files, so the
counts of a worker that exited stay in the totals, and its live gauges leave with it
(`worker_exited`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import asyncpg
from aiohttp import web
from prometheus_client import (
    PLATFORM_COLLECTOR,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from receiver.config import MetricsConfig, ServerConfig
from receiver.core.notification import Outcome
from receiver.gateways import QueryResult
from receiver.gateways.registry import PROVIDERS

# `python_info` names the Python version and implementation: nothing a scrape needs to show.
with contextlib.suppress(KeyError):
    REGISTRY.unregister(PLATFORM_COLLECTOR)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

NOTIFICATIONS = Counter(
    "receiver_notifications",
    "Notifications recorded in the notifications table, by outcome and source.",
    ["provider", "outcome", "source"],
)
NOTIFICATION_SECONDS = Histogram(
    "receiver_notification_seconds",
    "Time from receipt of a notification to its reply.",
    ["provider"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
HTTP_REFUSALS = Counter(
    "receiver_http_refusals",
    "Replies given before or without an outcome (400 from the HTTP parser, 405, 408, 413, "
    "415, 429, 503).",
    ["provider", "status"],
)
LEDGER_BATCH_SIZE = Histogram(
    "receiver_ledger_batch_size",
    "Notifications written in one ledger transaction.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000),
)
# With workers: the lowest of the live workers', so one worker cut off from the database shows.
DATABASE_UP = Gauge(
    "receiver_database_up",
    "1 when the last database call worked, else 0.",
    multiprocess_mode="livemin",
)
RECONCILE_QUERIES = Counter(
    "receiver_reconcile_queries",
    "Order queries sent to the gateways, by what they answered.",
    ["provider", "result"],
)
DELIVERIES = Counter(
    "receiver_deliveries",
    "Forwarding attempts to a destination, by what came of them.",
    ["destination", "result"],
)
# With workers: every worker reads the same figure from the database; the highest is shown.
DELIVERY_LAG = Gauge(
    "receiver_delivery_lag_seconds",
    "Age of the oldest event not yet delivered to the destination (0 when none).",
    ["destination"],
    multiprocess_mode="livemax",
)
# Served only by the process that serves /metrics (OrdersWatch): no worker holds a copy.
ORDERS_OVERDUE = "receiver_orders_overdue"
ORDERS_NEEDS_REVIEW = "receiver_orders_needs_review"
REVIEWS_OPEN = "receiver_reviews_open"
REVIEW_REASONS = ("applied_late", "amount_mismatch", "currency_mismatch", "paid_amount_differs")
BUILD_INFO = "receiver_build_info"

# Label children looked up once: `labels()` takes a lock and builds a key on every call.
_notifications: dict[tuple[str, str, str], Any] = {}
_seconds: dict[str, Any] = {}


def notification_recorded(provider: str, outcome: str, source: str) -> None:
    """Count one notification committed to the `notifications` table."""
    key = (provider, outcome, source)
    child = _notifications.get(key)
    if child is None:
        child = _notifications[key] = NOTIFICATIONS.labels(provider, outcome, source)
    child.inc()


def replied(provider: str, *, seconds: float) -> None:
    """Time one reply."""
    child = _seconds.get(provider)
    if child is None:
        child = _seconds[provider] = NOTIFICATION_SECONDS.labels(provider)
    child.observe(seconds)


def http_refused(provider: str, status: int) -> None:
    """Count one reply given before or without an outcome (the parser's 400, 405, ..., 503)."""
    HTTP_REFUSALS.labels(provider, str(int(status))).inc()


def reconcile_query_answered(provider: str, result: QueryResult) -> None:
    """Count one order query sent, by what came of it."""
    RECONCILE_QUERIES.labels(provider, result.value).inc()


def delivery_finished(destination: str, result: str) -> None:
    """Count one forwarding attempt: `delivered`, `retried` or `failed` (given up)."""
    DELIVERIES.labels(destination, result).inc()


def delivery_lag(destination: str, seconds: float) -> None:
    """Set the age of the oldest event not yet delivered to `destination`."""
    DELIVERY_LAG.labels(destination).set(seconds)


def zero_deliveries(destination: str) -> None:
    """The destination's series at 0, so that increase() sees the first failure."""
    for result in ("delivered", "retried", "failed"):
        DELIVERIES.labels(destination, result)
    DELIVERY_LAG.labels(destination).set(0)


def batch_written(size: int) -> None:
    """Observe the size of one ledger batch."""
    LEDGER_BATCH_SIZE.observe(size)


def zero_series() -> None:
    """Create the usual series at 0, so that rate() and increase() see their first rise."""
    for provider in PROVIDERS:
        for outcome in Outcome:
            NOTIFICATIONS.labels(provider, outcome.value, "notify")
        for result in QueryResult:
            RECONCILE_QUERIES.labels(provider, result.value)
        NOTIFICATION_SECONDS.labels(provider)


# --- the gauges that come from the database ------------------------------------------------

# Pending past reconcile.first_after_s, and waiting for a person, per provider. Two arms so that
# each can use its own partial index (pending orders by age; orders needing review).
COUNT_WATCHED_ORDERS = """
SELECT provider, count(*) AS overdue, 0 AS needs_review
FROM orders
WHERE status = 'pending' AND created_at < now() - $1::interval
GROUP BY provider
UNION ALL
SELECT provider, 0, count(*)
FROM orders
WHERE needs_review
GROUP BY provider
"""


# Open reviews by reason (the partial unique index on open reviews serves it).
COUNT_OPEN_REVIEWS = """
SELECT reason, count(*) AS open FROM reviews WHERE resolved_at IS NULL GROUP BY reason
"""


@dataclass(frozen=True, slots=True)
class OrderCounts:
    """What the last refresh found; None before the first one worked."""

    overdue: dict[str, int]
    needs_review: int
    reviews_open: dict[str, int] = field(default_factory=dict)


class OrdersWatch(Collector):
    """The database-derived gauges and build info, as last refreshed, for one registry."""

    def __init__(self, *, build_version: str) -> None:
        self.build_version = build_version
        self.counts: OrderCounts | None = None  # replaced whole: read from the listener's thread

    async def refresh(self, conn: asyncpg.Connection, *, overdue_after_s: int) -> None:
        """Count the overdue and needs-review orders now."""
        rows = await conn.fetch(COUNT_WATCHED_ORDERS, timedelta(seconds=overdue_after_s))
        overdue = dict.fromkeys(PROVIDERS, 0)
        for r in rows:
            overdue[r["provider"]] += r["overdue"]
        reviews = dict.fromkeys(REVIEW_REASONS, 0)
        for r in await conn.fetch(COUNT_OPEN_REVIEWS):
            reviews[r["reason"]] = r["open"]
        self.counts = OrderCounts(overdue, sum(r["needs_review"] for r in rows), reviews)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        info = GaugeMetricFamily(BUILD_INFO, "The running version.", labels=["version"])
        info.add_metric([self.build_version], 1)
        yield info
        counts = self.counts
        if counts is None:
            return  # no figure rather than a false zero
        overdue = GaugeMetricFamily(
            ORDERS_OVERDUE,
            "Orders still pending longer than reconcile.first_after_s after creation.",
            labels=["provider"],
        )
        for provider, n in sorted(counts.overdue.items()):
            overdue.add_metric([provider], n)
        yield overdue
        yield GaugeMetricFamily(
            ORDERS_NEEDS_REVIEW, "Orders flagged needs_review.", value=counts.needs_review
        )
        reviews = GaugeMetricFamily(
            REVIEWS_OPEN, "Reviews open (money held for a person), by reason.", labels=["reason"]
        )
        for reason, n in sorted(counts.reviews_open.items()):
            reviews.add_metric([reason], n)
        yield reviews


# Sample names per metric type, as the text exposition writes them.
_SAMPLE_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
}


def exposed_names() -> set[str]:
    """Every receiver_* sample name a scrape can show (alert rules and dashboards use these)."""
    watch = OrdersWatch(build_version="")
    watch.counts = OrderCounts({}, 0)
    families = [*REGISTRY.collect(), *watch.collect()]
    return {
        f.name + suffix
        for f in families
        if f.name.startswith("receiver_")
        for suffix in _SAMPLE_SUFFIXES.get(f.type, ("",))
    }


# --- where /metrics is served ----------------------------------------------------------------


def process_registry(watch: OrdersWatch) -> CollectorRegistry:
    """One process serving its own figures: the default registry plus the watch."""
    REGISTRY.register(watch)
    return REGISTRY


def workers_registry(path: str, watch: OrdersWatch) -> CollectorRegistry:
    """The supervisor's registry: every worker's files in `path`, merged, plus the watch."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    registry.register(watch)
    return registry


@contextlib.contextmanager
def multiprocess_dir() -> Iterator[str]:
    """A fresh directory for the workers' metric files, in the environment they inherit."""
    path = tempfile.mkdtemp(prefix="receiver-metrics-")
    previous = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = path
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous
        shutil.rmtree(path, ignore_errors=True)


def worker_exited(pid: int) -> None:
    """Drop an exited worker's live gauges (its counts stay in the totals)."""
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


def listen_address(config: MetricsConfig) -> str:
    """Where /metrics is served: host:port, or "off" when `[metrics] port` is 0."""
    return f"{config.host}:{config.port}" if config.port else "off"


class ListenerError(OSError):
    """The metrics listener could not bind its address."""


# What a scrape may ask for besides the metrics: nothing.
METRICS_PATH = "/metrics"


@dataclass
class Listener:
    """`/metrics` over HTTP on its own address, served on the running event loop.

    It holds up like the notify listener (the same connection handler): a connection that has
    not sent a whole request head within `header_timeout_s`, or sits idle that long after a
    reply, is closed, and past `config.max_connections` open at once a new one is closed at
    once, so however many connections it is sent it holds at most that many descriptors (which
    the notify listener leaves aside: see connections.connection_limit).
    """

    config: MetricsConfig
    registry: CollectorRegistry
    header_timeout_s: float = 10.0
    _server: Any = field(default=None, init=False)
    _web: Any = field(default=None, init=False)

    async def start(self) -> None:
        """Listen, unless `[metrics] port` is 0; ListenerError when the address is refused."""
        if not self.config.port:
            return
        self._web = web.Server(self._scrape, access_log=None)
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                self._handler_factory(), self.config.host, self.config.port, reuse_address=True
            )
        except OSError as exc:
            # asyncio words it "error while attempting to bind on address (...)": the plain one.
            problem = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ListenerError(
                f"metrics listener {listen_address(self.config)}: {problem}"
            ) from None

    def _handler_factory(self) -> Callable[[], web.RequestHandler]:
        # Here, not at the top: connections counts refusals through this module.
        from receiver.http.connections import OpenConnections, ReceiverRequestHandler  # noqa: PLC0415

        timeouts = ServerConfig(
            header_timeout_s=self.header_timeout_s, keepalive_timeout_s=self.header_timeout_s
        )
        connections = OpenConnections(self.config.max_connections)
        manager = self._web

        def handler() -> web.RequestHandler:
            return ReceiverRequestHandler(
                manager,
                loop=asyncio.get_running_loop(),
                server=timeouts,
                connections=connections,
                gateways={},
                access_log=None,
            )

        return handler

    async def _scrape(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.path != METRICS_PATH:
            return web.Response(status=404, text="Not Found\n")
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, text="Method Not Allowed\n")
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        resp = web.Response(body=encoder(self.registry))
        resp.headers["Content-Type"] = content_type  # with its version parameter, as written
        return resp

    async def stop(self) -> None:
        """Close the listening socket and every connection."""
        if self._server is not None:
            self._server.close()
            await self._web.shutdown(1.0)
            await self._server.wait_closed()
            self._server = None
