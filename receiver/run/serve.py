"""`receiver serve`: run the application, over HTTPS when a certificate is configured.

SIGTERM or SIGINT: stop accepting connections, let the notifications already in the handlers
finish (bodies still arriving are read, replies are sent after the commit) for up to
`server.shutdown_timeout_s`, cancel what is left (its transaction rolls back, the gateway
retries), exit 0. A second signal skips the wait.

One worker runs in this process. `--workers N` (N > 1) makes this process a supervisor of N
worker processes (multiprocessing, "spawn") that each bind the same port with SO_REUSEPORT, so the
kernel spreads connections across them:

- The supervisor checks the configuration (TLS files, gateway keys) before it starts anybody, and
  when no database URL is configured it starts the embedded PostgreSQL once and hands its URL to
  the workers, which would otherwise race to start it.
- SIGTERM or SIGINT to the supervisor is forwarded, once per signal, to every worker as SIGTERM.
  Workers run in their own process groups so that a terminal's Ctrl-C reaches them only through
  the supervisor: a second signal means "stop now", and must not be sent by accident.
- A worker that exits while nobody asked it to is logged and the others are stopped: no restart
  loop inside the service; the process manager (systemd, Kubernetes) restarts the whole, and one
  place decides. The exit status is 0 when every worker exited 0, else 1.
- A worker whose supervisor disappears (SIGKILL) shuts itself down gracefully.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Awaitable, Iterator, MutableMapping
from dataclasses import dataclass, field, replace
from multiprocessing.connection import wait as wait_for_sentinels
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

import structlog
from aiohttp import web

from receiver import metrics
from receiver.config import Config, ServerConfig
from receiver.errors import ConfigError, DatabaseUnavailable
from receiver.gateways.registry import build_gateways
from receiver.http import connections
from receiver.http.app import CleanupContext, background, create_app
from receiver.http.appkeys import IN_FLIGHT
from receiver.logging import configure_logging, get_logger, line_writer_factory
from receiver.run import eventloop, observe
from receiver.run.commands.args import MAX_WORKERS
from receiver.run.commands.failures import Failure, UsageError
from receiver.store import database

log = get_logger(__name__)


PARENT_CHECK_INTERVAL_S = 1.0
# After the drain: how long aiohttp lets a reply still being written finish before cancelling.
CANCEL_GRACE_S = 1.0
# Beyond shutdown_timeout_s: time for a worker's pools to close and the process to exit.
STOP_GRACE_S = 10.0


def tls_context(server: ServerConfig, *, source: str) -> ssl.SSLContext | None:
    """A server TLS context (TLS 1.2 or newer) when tls_cert and tls_key are set."""
    if server.tls_cert is None or server.tls_key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(server.tls_cert, server.tls_key)
    except (OSError, ssl.SSLError) as exc:
        problem = "not a matching PEM certificate and key"
        if not isinstance(exc, ssl.SSLError):  # its strerror is OpenSSL's "[SSL] PEM lib (...)"
            problem = exc.strerror or problem
        raise ConfigError(source=source, key="server.tls_cert", problem=problem) from None
    return ctx


def serve(config: Config, *, host: str | None, port: int | None, workers: int = 1) -> int:
    """Run until SIGTERM or SIGINT, then finish in-flight notifications and exit 0."""
    host = host or config.server.host
    port = config.server.port if port is None else port
    bind_pid_to_logs()
    if workers <= 1:
        with observe.observing_process(config) as observer:
            return run_worker(config, host=host, port=port, reuse_port=False, observer=observer)
    tls_context(config.server, source=config.source)  # bad files: exit 2 before any worker
    build_gateways(config)
    with (
        _reserved_port(host, port) as fixed_port,
        metrics.multiprocess_dir() as metrics_dir,  # before any worker: they inherit it
        _shared_database(config) as shared,
        observe.observing_workers(config, url=shared.database.url, path=metrics_dir),
    ):
        return Supervisor(config=shared, host=host, port=fixed_port, workers=workers).run()


def run_worker(
    config: Config,
    *,
    host: str,
    port: int,
    reuse_port: bool,
    parent_pid: int | None = None,
    observer: CleanupContext | None = None,
) -> int:
    """Serve in this process until a signal; 0 after a graceful shutdown.

    `observer`: the cleanup context of the process that serves /metrics, when this is it.
    """
    ssl_context = tls_context(config.server, source=config.source)
    connections.raise_open_files_limit()  # systemd's default soft limit is 1024
    app = create_app(config)
    metrics.zero_series()
    if parent_pid is not None:
        app.cleanup_ctx.append(_orphan_watch(parent_pid))
    if observer is not None:
        app.cleanup_ctx.append(observer)
    site = _Site(host=host, port=port, ssl_context=ssl_context, reuse_port=reuse_port)
    eventloop.run(
        _serve_until_stopped(app, site, shutdown_timeout=config.server.shutdown_timeout_s)
    )
    log.info("stopped")
    return 0


@dataclass(frozen=True, slots=True)
class _Site:
    host: str
    port: int
    ssl_context: ssl.SSLContext | None
    reuse_port: bool


async def _serve_until_stopped(
    app: web.Application, where: _Site, *, shutdown_timeout: float
) -> None:
    """Start, serve until SIGTERM or SIGINT, drain in-flight requests, clean up.

    Not `web.run_app`: aiohttp's graceful shutdown marks every connection closing first and from
    then on drops the bytes that arrive on it, so a notification whose body was still on its way
    at SIGTERM hangs until the timeout and is cut off. Here the listening socket closes, the
    requests already in the handlers finish (their bodies still read, their replies sent with
    `Connection: close`), and only then does aiohttp close the connections.
    """
    stop = _StopSignals()
    stop.install()
    in_flight = app[IN_FLIGHT]
    runner = connections.Runner(app, shutdown_timeout=CANCEL_GRACE_S)
    try:
        if not await stop.unless_requested(runner.setup()):  # database, migrations
            return
        site = web.TCPSite(
            runner,
            where.host,
            where.port,
            ssl_context=where.ssl_context,
            reuse_port=where.reuse_port or None,
        )
        await site.start()
        # What start-up made (modules, keys, the pool) lives as long as the process: out of the
        # collector's sight, full collections under load only walk what requests leave behind.
        gc.freeze()
        log.info(
            "serving",
            host=where.host,
            port=where.port,
            tls=where.ssl_context is not None,
            loop=eventloop.name(),
        )
        await stop.requested.wait()
        log.info("stopping", signal=stop.name, in_flight=in_flight.count)
        await site.stop()  # no new connections
        in_flight.draining = True
        if not await stop.unless_forced(in_flight.idle.wait(), within_s=shutdown_timeout):
            log.warning("shutdown_cut_short", in_flight=in_flight.count)
    finally:
        await runner.cleanup()  # closes connections; cancels what is left after CANCEL_GRACE_S


class _StopSignals:
    """SIGTERM or SIGINT asks for a graceful stop; a second one forces it."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.forced = asyncio.Event()
        self.name = ""

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.requested.is_set():
            self.forced.set()
        self.name = self.name or sig.name
        self.requested.set()

    async def unless_requested(self, work: Awaitable[None]) -> bool:
        """Run `work`; False (and `work` cancelled) if a stop was asked for first."""
        return await _first(work, self.requested, within_s=None)

    async def unless_forced(self, work: Awaitable[Any], *, within_s: float) -> bool:
        """Run `work` for up to `within_s`; False if it took longer or a stop was forced."""
        return await _first(work, self.forced, within_s=within_s)


async def _first(work: Awaitable[Any], interrupt: asyncio.Event, *, within_s: float | None) -> bool:
    task = asyncio.ensure_future(work)
    interrupted = asyncio.ensure_future(interrupt.wait())
    await asyncio.wait({task, interrupted}, timeout=within_s, return_when=asyncio.FIRST_COMPLETED)
    interrupted.cancel()
    if task.done():
        task.result()  # startup errors propagate
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False


def bind_pid_to_logs() -> None:
    """Add this process's pid to every log line, and write each line whole with write(2) (the
    console format too): workers share stdout, so lines from two processes must not interleave."""
    pid = os.getpid()

    def add_pid(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> Any:
        event.setdefault("pid", pid)
        return event

    processors = structlog.get_config()["processors"]
    structlog.configure(
        processors=[add_pid, *processors], logger_factory=line_writer_factory(sys.stdout)
    )


def _orphan_watch(parent_pid: int) -> CleanupContext:
    return background(lambda _app: _stop_when_orphaned(parent_pid))


async def _stop_when_orphaned(parent_pid: int) -> None:
    # Polling: no portable notification exists for "my parent died" (prctl is Linux-only).
    while True:
        await asyncio.sleep(PARENT_CHECK_INTERVAL_S)
        if os.getppid() != parent_pid:
            break
    log.warning("supervisor_gone", supervisor_pid=parent_pid)
    os.kill(os.getpid(), signal.SIGTERM)  # the same graceful path as an operator's SIGTERM


def _worker_main(config: Config, host: str, port: int, parent_pid: int) -> None:
    """Entry point of a worker process (spawned: nothing inherited but these arguments)."""
    os.setpgrp()
    configure_logging(fmt=config.log.format, level=config.log.level)
    bind_pid_to_logs()
    try:
        code = run_worker(config, host=host, port=port, reuse_port=True, parent_pid=parent_pid)
    except ConfigError as exc:
        code = _worker_fail(2, f"configuration error: {exc}")
    except (DatabaseUnavailable, database.MigrationError, OSError) as exc:
        code = _worker_fail(1, str(exc))
    sys.exit(code)


def _worker_fail(code: int, line: str) -> int:
    print(f"receiver: worker {os.getpid()}: {line}", file=sys.stderr)
    return code


@contextlib.contextmanager
def _reserved_port(host: str, port: int) -> Iterator[int]:
    """`port`, or for port 0 one free port held (bound, never listening) for every worker."""
    if port != 0:
        yield port
        return
    family, kind, proto, _, address = socket.getaddrinfo(
        host, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        yield int(sock.getsockname()[1])


@contextlib.contextmanager
def _shared_database(config: Config) -> Iterator[Config]:
    """The configuration with a database URL: the embedded server's, started here, once."""
    if config.database.url:
        asyncio.run(
            database.check_not_refused(config.database.url, pgbouncer=config.database.pgbouncer)
        )  # one line, not N workers'
        yield config
        return
    server = database.EmbeddedPostgres(config.database.data_dir)
    url = asyncio.run(server.start(create=True))
    try:
        yield replace(config, database=replace(config.database, url=url))
    finally:
        asyncio.run(server.stop())


@dataclass
class Supervisor:
    """N worker processes on one port; forwards stop signals; stops all when one dies."""

    config: Config
    host: str
    port: int
    workers: int
    procs: list[BaseProcess] = field(default_factory=list)
    signalled: set[int] = field(default_factory=set)
    failed: bool = False
    stop_deadline: float | None = None

    def run(self) -> int:
        """Start the workers and supervise them until every one has exited."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._start_all()
            if self.stop_deadline is not None:
                self._stop()  # a signal came while workers were being started
            log.info("workers_started", pids=[p.pid for p in self.procs], port=self.port)
            self._supervise()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        log.info("supervisor_stopped", failed=self.failed)
        return 1 if self.failed else 0

    def _start_all(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        for i in range(self.workers):
            if self.stop_deadline is not None:
                return
            proc = ctx.Process(
                target=_worker_main,
                args=(self.config, self.host, self.port, os.getpid()),
                name=f"receiver-worker-{i}",
            )
            proc.start()
            self.procs.append(proc)

    def _supervise(self) -> None:
        running = list(self.procs)
        while running:
            ready = wait_for_sentinels([p.sentinel for p in running], timeout=0.5)
            for proc in [p for p in running if p.sentinel in ready]:
                proc.join()
                running.remove(proc)
                self._exited(proc)
            if self.stop_deadline is not None and time.monotonic() > self.stop_deadline:
                self._kill(running)

    def _exited(self, proc: BaseProcess) -> None:
        code = proc.exitcode
        if proc.pid is not None:
            metrics.worker_exited(proc.pid)
        # Killed by the SIGTERM we forwarded before it could install aiohttp's handler: it
        # never accepted a connection, so that is a clean stop too.
        clean = code == 0 or (self.stop_deadline is not None and code == -signal.SIGTERM)
        self.failed = self.failed or not clean
        if self.stop_deadline is None:
            log.error("worker_exited_unexpectedly", worker_pid=proc.pid, exitcode=code)
            self._stop()
        else:
            log.info("worker_exited", worker_pid=proc.pid, exitcode=code)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.stop_deadline is not None:
            # A second signal: forward it again, which makes aiohttp stop without waiting.
            log.warning("supervisor_forcing_stop", signal=name)
            self.signalled.clear()
        else:
            log.info("supervisor_stopping", signal=name)
        self._stop()

    def _stop(self) -> None:
        """SIGTERM, once, to every worker still running."""
        if self.stop_deadline is None:
            grace = self.config.server.shutdown_timeout_s + STOP_GRACE_S
            self.stop_deadline = time.monotonic() + grace
        for proc in self.procs:
            if proc.exitcode is None and proc.pid is not None and proc.pid not in self.signalled:
                self.signalled.add(proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)

    def _kill(self, running: list[BaseProcess]) -> None:
        for proc in running:
            log.error("worker_killed", worker_pid=proc.pid, reason="did not stop in time")
            proc.kill()
        self.failed = True
        self.stop_deadline = time.monotonic() + STOP_GRACE_S


# --- what `receiver serve` checks before the database or any worker starts -----------------


def check_workers(workers: int) -> None:
    if workers < 1:
        raise UsageError("--workers must be 1 or more")
    if workers > MAX_WORKERS:
        # Each worker holds database.pool_min connections and more: thousands of processes
        # would take every connection the database has before failing one by one.
        raise UsageError(f"--workers {workers} is out of range (at most {MAX_WORKERS})")
    if workers > 1 and not hasattr(socket, "SO_REUSEPORT"):
        raise UsageError("--workers above 1 needs SO_REUSEPORT, which this system lacks")


def check_listen(config: Config, *, host: str | None, port: int | None) -> None:
    """Refuse, before the database or any worker starts, an address nobody can listen on;
    `host` and `port` are the command line's (None: the configuration's)."""
    listen_host = host or config.server.host
    listen_port = config.server.port if port is None else port
    try:
        _try_bind(listen_host, listen_port)
    except socket.gaierror as exc:
        problem = f"{listen_host!r} is not a known host name or address ({exc.strerror})"
        if host:
            raise UsageError(f"--host {problem}") from None
        raise ConfigError(source=config.source, key="server.host", problem=problem) from None
    except OSError as exc:
        raise Failure(f"cannot listen on {listen_host}:{listen_port}: {exc.strerror}") from None


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
