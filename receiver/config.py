"""Configuration: frozen dataclasses loaded from TOML plus environment.

Lookup: `--config F`, else `$RECEIVER_CONFIG`, else `receiver.toml` in the working directory,
else built-in defaults. `RECEIVER_DATABASE_URL` overrides `database.url`. Errors name the file,
the key and what is wrong, never a value: values may be secrets. An error about a value read from
the environment (`RECEIVER_DATABASE_URL`, the variable a `*_env` key names) names the variable.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from receiver.core.addresses import Network
from receiver.errors import ENVIRONMENT, ConfigError

T = TypeVar("T")
Table = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 65536
    trusted_proxies: tuple[Network, ...] = ()
    tls_cert: Path | None = None
    tls_key: Path | None = None
    read_timeout_s: float = 10.0
    shutdown_timeout_s: float = 30.0
    header_timeout_s: float = 10.0  # request head not complete within this: connection closed
    keepalive_timeout_s: float = 75.0  # idle keep-alive connection closed after this
    max_connections: int = 1000  # more open client connections are closed at once
    unverified_per_minute: int = 600  # refusals before a verified signature, per address: 429


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    host: str = "127.0.0.1"
    port: int = 9464  # 0: no metrics listener
    max_connections: int = 64  # more open scrape connections are closed at once


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    url: str = field(default="", repr=False)  # may carry a password
    data_dir: Path = Path(".receiver")
    pool_min: int = 2
    pool_max: int = 10
    pgbouncer: bool = False  # no session state between transactions (transaction pooling)
    listen_url: str = field(default="", repr=False)  # a direct connection for LISTEN


@dataclass(frozen=True, slots=True)
class LedgerConfig:
    batch_max: int = 64  # notifications written in one transaction at most; 1 = no batching
    # Batches being written at once (each holds a connection). One makes the batches bigger: a
    # batch costs about as much service and database CPU as ten notifications, whatever its size.
    batch_concurrency: int = 1


@dataclass(frozen=True, slots=True)
class LogConfig:
    format: str = "json"
    level: str = "info"


@dataclass(frozen=True, slots=True)
class GoPayMerchant:
    mchid: str
    platform_public_keys: tuple[Path, ...]
    private_key: Path | None = None  # the merchant's RSA private key: signs order queries
    api_key: str = field(default="", repr=False)  # sent as x-ca-auth on order queries
    default_channel: str = ""  # for orders without a channel


@dataclass(frozen=True, slots=True)
class GoPayConfig:
    timestamp_tolerance_s: int = 900
    allowed_ips: tuple[Network, ...] = ()
    merchants: tuple[GoPayMerchant, ...] = ()
    api_url: str = ""  # order queries go to {api_url}/pay/orderquery; empty: none


@dataclass(frozen=True, slots=True)
class BaofooMerchant:
    member_id: str
    terminal_id: str
    md5_key: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class BaofooConfig:
    allowed_ips: tuple[Network, ...] = ()
    merchants: tuple[BaofooMerchant, ...] = ()
    query_url: str = ""  # order queries; empty: none


@dataclass(frozen=True, slots=True)
class ReconcileConfig:
    enabled: bool = True  # serve queries overdue orders (for gateways whose URL is set)
    first_after_s: int = 300  # first query this long after the order was created
    intervals_s: tuple[int, ...] = (300, 600, 1800, 3600, 21600)  # then these; the last repeats
    give_up_after_s: int = 604800  # orders older than this are no longer queried
    timeout_s: float = 10.0  # one query
    concurrency: int = 8  # queries in flight at once, per process
    max_per_second: float = 8.0  # queries a second per gateway, per process (GoPay refuses > 10)


@dataclass(frozen=True, slots=True)
class ForwardDestination:
    """A `[[forward]]` destination: order events are POSTed to `url`, signed with `secret`."""

    name: str
    url: str
    secret: str = field(repr=False)  # "whsec_" + base64 (Standard Webhooks)
    types: tuple[str, ...] = ()  # empty: every type
    providers: tuple[str, ...] = ()  # empty: every gateway
    timeout_s: float = 10.0
    give_up_after_s: int = 259200
    retry_s: tuple[float, ...] = (5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800)


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    notifications_months: int = 0  # whole months kept before the current one; 0: keep for ever
    archive_dir: Path | None = None  # when set, each month is archived here before it is dropped


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = ServerConfig()
    database: DatabaseConfig = DatabaseConfig()
    log: LogConfig = LogConfig()
    ledger: LedgerConfig = LedgerConfig()
    gopay: GoPayConfig = GoPayConfig()
    baofoo: BaofooConfig = BaofooConfig()
    metrics: MetricsConfig = MetricsConfig()
    reconcile: ReconcileConfig = ReconcileConfig()
    forward: tuple[ForwardDestination, ...] = ()
    retention: RetentionConfig = RetentionConfig()
    source: str = "(defaults)"
    # The secrets (`*_env` variables) this command did not read, being of sections it does not
    # use: left empty in the configuration, so that the command does not need them.
    deferred: tuple[DeferredSecret, ...] = ()


@dataclass(frozen=True, slots=True)
class DeferredSecret:
    """A secret this command did not read: the variable and the key that names it."""

    variable: str
    named_by: str


# Baofoo's published test MD5 key (the seed's examples sign with it): anyone can sign with it.
BAOFOO_TEST_MD5_KEY = "abcdefg"
TEST_KEY_PROBLEM = "is Baofoo's published test key: anyone can sign with it"


MAX_RETENTION_MONTHS = 1200  # a hundred years: past that, a typo
DEFAULT_FILE = "receiver.toml"
DEFAULTS = "(defaults)"  # the source of a configuration read from no file
DATABASE_URL_VARIABLE = "RECEIVER_DATABASE_URL"
CONFIG_VARIABLE = "RECEIVER_CONFIG"


def find_config_file(explicit: str | None, environ: Mapping[str, str]) -> Path | None:
    """The file to read: --config, else $RECEIVER_CONFIG, else ./receiver.toml if present."""
    if explicit:
        return Path(explicit)
    if environ.get(CONFIG_VARIABLE):
        return Path(environ[CONFIG_VARIABLE])
    default = Path(DEFAULT_FILE)
    return default if default.is_file() else None


def load_config(
    explicit: str | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    secrets: Collection[str] | None = None,
) -> Config:
    """Read the configuration the way every command does; `secrets`: the sections whose secrets
    the command uses (`gopay`, `baofoo`; None: every section's). The others' environment
    variables are not read (see Config.deferred)."""
    env = os.environ if environ is None else environ
    path = find_config_file(explicit, env)
    if path is None:
        return parse_config({}, source=DEFAULTS, base=Path.cwd(), environ=env, secrets=secrets)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        if not explicit and env.get(CONFIG_VARIABLE):  # the environment chose the file: say so
            problem = f"{path}: {_os_problem(exc)}"
            raise ConfigError(source=ENVIRONMENT, key=CONFIG_VARIABLE, problem=problem) from None
        raise ConfigError(source=str(path), key="(file)", problem=_os_problem(exc)) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(
            source=str(path), key="(file)", problem=f"not valid TOML: {exc}"
        ) from None
    return parse_config(data, source=str(path), base=path.parent, environ=env, secrets=secrets)


def require_merchants(config: Config) -> None:
    """Raise ConfigError, naming where the configuration was looked for, when no merchant of
    any gateway is configured: a service without one could only refuse every notification."""
    if config.gopay.merchants or config.baofoo.merchants:
        return
    problem = "no merchant configured: every notification would be refused as unknown_merchant"
    if config.source == DEFAULTS:
        looked = f"--config, ${CONFIG_VARIABLE}, {Path.cwd() / DEFAULT_FILE}"
        problem = f"no configuration file found (looked at {looked}), so {problem}"
    raise ConfigError(
        source=config.source, key="[[gopay.merchants]], [[baofoo.merchants]]", problem=problem
    )


def _os_problem(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def parse_config(
    data: Table,
    *,
    source: str,
    base: Path,
    environ: Mapping[str, str],
    secrets: Collection[str] | None = None,
) -> Config:
    """Build a Config from parsed TOML; relative paths are relative to `base`."""
    wanted = None if secrets is None else frozenset(secrets)
    r = _Reader(source=source, base=base, environ=environ, secrets=wanted)
    r.only(
        data,
        "",
        {
            "server",
            "database",
            "log",
            "ledger",
            "gopay",
            "baofoo",
            "metrics",
            "reconcile",
            "forward",
            "retention",
        },
    )
    return Config(
        server=r.server(r.table(data, "server")),
        database=r.database(r.table(data, "database")),
        log=r.log(r.table(data, "log")),
        ledger=r.ledger(r.table(data, "ledger")),
        gopay=r.gopay(r.table(data, "gopay")),
        baofoo=r.baofoo(r.table(data, "baofoo")),
        metrics=r.metrics(r.table(data, "metrics")),
        reconcile=r.reconcile(r.table(data, "reconcile")),
        forward=r.forward(data),
        retention=r.retention(r.table(data, "retention")),
        source=source,
        deferred=tuple(r.deferred),
    )


@dataclass(frozen=True, slots=True)
class _Reader:
    """Typed access to TOML tables that reports errors by key path."""

    source: str
    base: Path
    environ: Mapping[str, str]
    secrets: frozenset[str] | None = None  # the sections whose secrets are read; None: all
    deferred: list[DeferredSecret] = field(default_factory=list)

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(source=self.source, key=key, problem=problem)

    def environment_fail(self, variable: str, problem: str) -> ConfigError:
        return ConfigError(source=ENVIRONMENT, key=variable, problem=problem)

    def only(self, table: Table, prefix: str, allowed: set[str]) -> None:
        for key in table:
            if key not in allowed:
                raise self.fail(prefix + key, _unknown_key(key, allowed, prefix=prefix))

    def table(self, data: Table, key: str) -> Table:
        value = data.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(key, "must be a table")
        return value

    def get(self, table: Table, key: str, kind: type[T], default: T) -> T:
        value = table.get(key.rsplit(".", 1)[-1], default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(key, f"must be {_KIND_NAMES.get(kind, kind.__name__)}")
        return value

    def checked(self, key: str, value: T, ok: Callable[[T], bool], problem: str) -> T:
        if not ok(value):
            raise self.fail(key, problem)
        return value

    def path(self, key: str, text: str) -> Path:
        p = Path(text).expanduser()
        return p if p.is_absolute() else self.base / p

    def networks(self, table: Table, key: str) -> tuple[Network, ...]:
        items = self.get(table, key, list, [])
        nets = []
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise self.fail(f"{key}[{i}]", "must be a CIDR string")
            try:
                nets.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise self.fail(f"{key}[{i}]", "not an IP address or CIDR") from None
        return tuple(nets)

    def server(self, t: Table) -> ServerConfig:
        self.only(t, "server.", {*ServerConfig.__dataclass_fields__})
        d = ServerConfig()
        positive = "must be greater than 0"
        cert = self.get(t, "server.tls_cert", str, "")
        key = self.get(t, "server.tls_key", str, "")
        if bool(cert) != bool(key):
            raise self.fail("server.tls_cert", "tls_cert and tls_key must be set together")
        return ServerConfig(
            host=self.get(t, "server.host", str, d.host),
            port=self.checked(
                "server.port",
                self.get(t, "server.port", int, d.port),
                lambda p: 0 <= p <= 65535,
                "must be a port number (0-65535)",
            ),
            max_body_bytes=self.checked(
                "server.max_body_bytes",
                self.get(t, "server.max_body_bytes", int, d.max_body_bytes),
                lambda n: n > 0,
                positive,
            ),
            trusted_proxies=self.networks(t, "server.trusted_proxies"),
            tls_cert=self.path("server.tls_cert", cert) if cert else None,
            tls_key=self.path("server.tls_key", key) if key else None,
            read_timeout_s=self.checked(
                "server.read_timeout_s",
                self.get(t, "server.read_timeout_s", float, d.read_timeout_s),
                lambda n: n > 0,
                positive,
            ),
            shutdown_timeout_s=self.positive(t, "server.shutdown_timeout_s", d.shutdown_timeout_s),
            header_timeout_s=self.positive(t, "server.header_timeout_s", d.header_timeout_s),
            keepalive_timeout_s=self.positive(
                t, "server.keepalive_timeout_s", d.keepalive_timeout_s
            ),
            max_connections=self.positive(t, "server.max_connections", d.max_connections),
            unverified_per_minute=self.positive(
                t, "server.unverified_per_minute", d.unverified_per_minute
            ),
        )

    def positive(self, t: Table, key: str, default: T) -> T:
        """A number greater than zero, of the default's type."""
        value = self.get(t, key, type(default), default)
        return self.checked(key, value, lambda n: n > 0, "must be greater than 0")  # type: ignore[operator]

    def port(self, t: Table, key: str, default: int) -> int:
        return self.checked(
            key,
            self.get(t, key, int, default),
            lambda p: 0 <= p <= 65535,
            "must be a port (0-65535)",
        )

    def url(self, t: Table, key: str) -> str:
        value = self.get(t, key, str, "")
        if value and not value.startswith(("http://", "https://")):
            raise self.fail(key, "must be an http:// or https:// URL")
        return value.rstrip("/")

    def metrics(self, t: Table) -> MetricsConfig:
        self.only(t, "metrics.", {"host", "port", "max_connections"})
        d = MetricsConfig()
        return MetricsConfig(
            host=self.get(t, "metrics.host", str, d.host),
            port=self.port(t, "metrics.port", d.port),
            max_connections=self.positive(t, "metrics.max_connections", d.max_connections),
        )

    def reconcile(self, t: Table) -> ReconcileConfig:
        self.only(t, "reconcile.", {*ReconcileConfig.__dataclass_fields__})
        d = ReconcileConfig()
        intervals = self.get(t, "reconcile.intervals_s", list, list(d.intervals_s))
        if not intervals or not all(
            isinstance(i, int) and not isinstance(i, bool) and i > 0 for i in intervals
        ):
            raise self.fail("reconcile.intervals_s", "must be a non-empty list of seconds > 0")
        return ReconcileConfig(
            enabled=self.get(t, "reconcile.enabled", bool, d.enabled),
            first_after_s=self.positive(t, "reconcile.first_after_s", d.first_after_s),
            intervals_s=tuple(intervals),
            give_up_after_s=self.positive(t, "reconcile.give_up_after_s", d.give_up_after_s),
            timeout_s=self.positive(t, "reconcile.timeout_s", d.timeout_s),
            concurrency=self.positive(t, "reconcile.concurrency", d.concurrency),
            max_per_second=self.positive(t, "reconcile.max_per_second", d.max_per_second),
        )

    def forward(self, data: Table) -> tuple[ForwardDestination, ...]:
        destinations = tuple(
            self.destination(t, f"forward[{i}]") for i, t in enumerate(self.tables(data, "forward"))
        )
        self.unique([d.name for d in destinations], "forward", "name")
        return destinations

    def destination(self, t: Table, key: str) -> ForwardDestination:
        self.only(t, key + ".", {*ForwardDestination.__dataclass_fields__, "secret_env"})
        d = ForwardDestination(name="", url="", secret="")
        name = self.required_str(t, key, "name")
        if not _DESTINATION_NAME.fullmatch(name):
            raise self.fail(f"{key}.name", "must be letters, digits, '.', '_' or '-' (1-64)")
        url = self.url(t, f"{key}.url")
        if not url:
            raise self.fail(f"{key}.url", "missing (an http:// or https:// URL)")
        secret = self.secret(t, key, "secret", required=True)
        if self.reads_secrets_of(key) and not _is_webhook_secret(secret):
            raise self.fail(f"{key}.secret", 'must be "whsec_" followed by base64')
        return ForwardDestination(
            name=name,
            url=url,
            secret=secret,
            types=self.choices(t, f"{key}.types", _EVENT_TYPES),
            providers=self.choices(t, f"{key}.providers", _providers()),
            timeout_s=self.positive(t, f"{key}.timeout_s", d.timeout_s),
            give_up_after_s=self.positive(t, f"{key}.give_up_after_s", d.give_up_after_s),
            retry_s=self.seconds_list(t, f"{key}.retry_s", d.retry_s),
        )

    def choices(self, t: Table, key: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
        items = self.get(t, key, list, [])
        if not all(isinstance(i, str) and i in allowed for i in items):
            raise self.fail(key, f"must list some of {', '.join(allowed)}")
        return tuple(items)

    def seconds_list(self, t: Table, key: str, default: tuple[float, ...]) -> tuple[float, ...]:
        items = self.get(t, key, list, list(default))
        if not items or not all(
            isinstance(i, int | float) and not isinstance(i, bool) and i > 0 for i in items
        ):
            raise self.fail(key, "must be a non-empty list of seconds > 0")
        return tuple(float(i) for i in items)

    def retention(self, t: Table) -> RetentionConfig:
        self.only(t, "retention.", {"notifications_months", "archive_dir"})
        months = self.checked(
            "retention.notifications_months",
            self.get(t, "retention.notifications_months", int, 0),
            lambda n: 0 <= n <= MAX_RETENTION_MONTHS,
            f"must be a whole number of months, 0 (keep for ever) to {MAX_RETENTION_MONTHS}",
        )
        archive = self.get(t, "retention.archive_dir", str, "")
        return RetentionConfig(
            notifications_months=months,
            archive_dir=self.path("retention.archive_dir", archive) if archive else None,
        )

    def database(self, t: Table) -> DatabaseConfig:
        self.only(
            t, "database.", {"url", "data_dir", "pool_min", "pool_max", "pgbouncer", "listen_url"}
        )
        d = DatabaseConfig()
        url = self.database_url(t)
        pool_min = self.get(t, "database.pool_min", int, d.pool_min)
        pool_max = self.get(t, "database.pool_max", int, d.pool_max)
        if not 1 <= pool_min <= pool_max:
            raise self.fail("database.pool_max", "need 1 <= pool_min <= pool_max")
        return DatabaseConfig(
            url=url,
            data_dir=self.path(
                "database.data_dir", self.get(t, "database.data_dir", str, ".receiver")
            ),
            pool_min=pool_min,
            pool_max=pool_max,
            pgbouncer=self.get(t, "database.pgbouncer", bool, d.pgbouncer),
            listen_url=self.listen_url(t),
        )

    def listen_url(self, t: Table) -> str:
        url = self.get(t, "database.listen_url", str, "")
        if problem := _database_url_problem(url):
            raise self.fail("database.listen_url", problem)
        return url

    def database_url(self, t: Table) -> str:
        from_environment = self.environ.get(DATABASE_URL_VARIABLE, "")
        url = from_environment or self.get(t, "database.url", str, "")
        if problem := _database_url_problem(url):
            if from_environment:
                raise self.environment_fail(DATABASE_URL_VARIABLE, problem)
            raise self.fail("database.url", problem)
        return url

    def log(self, t: Table) -> LogConfig:
        self.only(t, "log.", {"format", "level"})
        fmt = self.get(t, "log.format", str, "json")
        level = self.get(t, "log.level", str, "info").lower()
        self.checked(
            "log.format", fmt, lambda f: f in {"json", "console"}, 'must be "json" or "console"'
        )
        self.checked(
            "log.level", level, lambda v: v in _LEVELS, f"must be one of {', '.join(_LEVELS)}"
        )
        return LogConfig(format=fmt, level=level)

    def ledger(self, t: Table) -> LedgerConfig:
        self.only(t, "ledger.", {"batch_max", "batch_concurrency"})
        d = LedgerConfig()
        return LedgerConfig(
            batch_max=self.checked(
                "ledger.batch_max",
                self.get(t, "ledger.batch_max", int, d.batch_max),
                lambda n: 1 <= n <= 1000,
                "must be from 1 to 1000",
            ),
            batch_concurrency=self.checked(
                "ledger.batch_concurrency",
                self.get(t, "ledger.batch_concurrency", int, d.batch_concurrency),
                lambda n: n >= 1,
                "must be 1 or more",
            ),
        )

    def gopay(self, t: Table) -> GoPayConfig:
        self.only(t, "gopay.", {"timestamp_tolerance_s", "allowed_ips", "merchants", "api_url"})
        merchants = tuple(
            self.gopay_merchant(m, f"gopay.merchants[{i}]")
            for i, m in enumerate(self.tables(t, "gopay.merchants"))
        )
        self.unique([m.mchid for m in merchants], "gopay.merchants", "mchid")
        return GoPayConfig(
            timestamp_tolerance_s=self.checked(
                "gopay.timestamp_tolerance_s",
                self.get(t, "gopay.timestamp_tolerance_s", int, 900),
                lambda n: n >= 0,
                "must be 0 or more",
            ),
            allowed_ips=self.networks(t, "gopay.allowed_ips"),
            merchants=merchants,
            api_url=self.url(t, "gopay.api_url"),
        )

    def gopay_merchant(self, t: Table, key: str) -> GoPayMerchant:
        self.only(
            t,
            key + ".",
            {
                "mchid",
                "platform_public_keys",
                "private_key",
                "api_key",
                "api_key_env",
                "default_channel",
            },
        )
        mchid = self.required_str(t, key, "mchid")
        keys = self.get(t, f"{key}.platform_public_keys", list, [])
        if not keys or not all(isinstance(k, str) and k for k in keys):
            raise self.fail(f"{key}.platform_public_keys", "must be a non-empty list of file paths")
        private_key = self.get(t, f"{key}.private_key", str, "")
        return GoPayMerchant(
            mchid=mchid,
            platform_public_keys=tuple(self.path(key, k) for k in keys),
            private_key=self.path(f"{key}.private_key", private_key) if private_key else None,
            api_key=self.secret(t, key, "api_key", required=False),
            default_channel=self.get(t, f"{key}.default_channel", str, ""),
        )

    def baofoo(self, t: Table) -> BaofooConfig:
        self.only(t, "baofoo.", {"allowed_ips", "merchants", "query_url"})
        merchants = tuple(
            self.baofoo_merchant(m, f"baofoo.merchants[{i}]")
            for i, m in enumerate(self.tables(t, "baofoo.merchants"))
        )
        self.unique(
            [f"{m.member_id}/{m.terminal_id}" for m in merchants],
            "baofoo.merchants",
            "member_id/terminal_id",
        )
        return BaofooConfig(
            allowed_ips=self.networks(t, "baofoo.allowed_ips"),
            merchants=merchants,
            query_url=self.url(t, "baofoo.query_url"),
        )

    def baofoo_merchant(self, t: Table, key: str) -> BaofooMerchant:
        self.only(t, key + ".", {"member_id", "terminal_id", "md5_key", "md5_key_env"})
        member_id = self.required_str(t, key, "member_id")
        terminal_id = self.required_str(t, key, "terminal_id")
        md5_key = self.secret(t, key, "md5_key", required=True)
        if md5_key == BAOFOO_TEST_MD5_KEY:
            variable = self.get(t, f"{key}.md5_key_env", str, "")
            if variable:
                raise self.environment_fail(variable, f"{TEST_KEY_PROBLEM} ({key}.md5_key_env)")
            raise self.fail(f"{key}.md5_key", TEST_KEY_PROBLEM)
        return BaofooMerchant(member_id=member_id, terminal_id=terminal_id, md5_key=md5_key)

    def secret(self, t: Table, key: str, name: str, *, required: bool) -> str:
        """`name` inline or from the environment variable `{name}_env` names."""
        env_name = self.get(t, f"{key}.{name}_env", str, "")
        inline = self.get(t, f"{key}.{name}", str, "")
        if env_name and inline:
            raise self.fail(f"{key}.{name}", f"set {name} or {name}_env, not both")
        if env_name and not self.reads_secrets_of(key):
            self.deferred.append(DeferredSecret(variable=env_name, named_by=f"{key}.{name}_env"))
            return ""
        if env_name:
            return self.secret_from_environment(env_name, named_by=f"{key}.{name}_env")
        if required and not inline:
            raise self.fail(f"{key}.{name}", f"missing (set {name} or {name}_env)")
        if problem := _secret_problem(inline):
            raise self.fail(f"{key}.{name}", problem)
        return inline

    def reads_secrets_of(self, key: str) -> bool:
        """Whether this command reads the secrets of `key`'s section (gopay.merchants[0]: gopay)."""
        section = key.split(".", 1)[0].split("[", 1)[0]
        return self.secrets is None or section in self.secrets

    def secret_from_environment(self, variable: str, *, named_by: str) -> str:
        value = self.environ.get(variable, "")
        if value:
            problem = _secret_problem(value)
        else:
            problem = "is empty" if variable in self.environ else "is not set"
        if problem:
            raise self.environment_fail(variable, f"{problem} ({named_by} names it)")
        return value

    def tables(self, t: Table, key: str) -> list[Table]:
        items = self.get(t, key, list, [])
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise self.fail(f"{key}[{i}]", "must be a table")
        return items

    def required_str(self, t: Table, key: str, name: str) -> str:
        value = t.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value:
            raise self.fail(f"{key}.{name}", "missing or not a string")
        return value

    def unique(self, values: list[str], key: str, what: str) -> None:
        if len(set(values)) != len(values):
            raise self.fail(key, f"{what} appears twice")


def _unknown_key(key: str, allowed: Collection[str], *, prefix: str) -> str:
    """ "unknown key", with the likeliest key meant when one is close (a typo, a plural)."""
    close = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.6)
    return f"unknown key (did you mean {prefix}{close[0]}?)" if close else "unknown key"


def _database_url_problem(url: str) -> str:
    if not url:
        return ""
    if not url.startswith(("postgres://", "postgresql://")):
        return "must start with postgresql://"
    try:
        parts = urlsplit(url)
        if "," not in parts.netloc:  # several hosts (libpq's failover list) have several ports
            parts.port  # noqa: B018 - parsing it is the check
    except ValueError:
        return "is not a valid URL (look at its host and port)"
    return ""


_DESTINATION_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_EVENT_TYPES = ("order.paid", "order.failed", "order.closed")


def _providers() -> tuple[str, ...]:
    """The gateways' names, from their registry (which imports this module: hence the import
    at call time)."""
    from receiver.gateways.registry import PROVIDERS  # noqa: PLC0415 - an import cycle otherwise

    return PROVIDERS


def _is_webhook_secret(value: str) -> bool:
    """A Standard Webhooks secret: "whsec_" and the key in base64."""
    if not value.startswith("whsec_"):
        return False
    try:
        return bool(base64.b64decode(value.removeprefix("whsec_"), validate=True))
    except binascii.Error:
        return False


def _secret_problem(value: str) -> str:
    """What makes a key unusable as given (a newline pasted with it signs everything wrong)."""
    if value != value.strip():
        return "has leading or trailing white space"
    if not value.isprintable():
        return "contains a control character"
    return ""


_LEVELS = ("debug", "info", "warning", "error")
_KIND_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    list: "a list",
    bool: "true or false",
}
