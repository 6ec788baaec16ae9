"""Configuration: frozen dataclasses loaded from TOML plus environment.

Lookup: `--config F`, else `$RECEIVER_CONFIG`, else `receiver.toml` in the working directory,
else built-in defaults. `RECEIVER_DATABASE_URL` overrides `database.url`. Errors name the file,
the key and what is wrong, never a value: values may be secrets. An error about a value read from
the environment (`RECEIVER_DATABASE_URL`, the variable a `*_env` key names) names the variable.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from receiver.errors import ENVIRONMENT, ConfigError

T = TypeVar("T")
Table = Mapping[str, Any]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


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


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    url: str = field(default="", repr=False)  # may carry a password
    data_dir: Path = Path(".receiver")
    pool_min: int = 2
    pool_max: int = 10


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
    retention: RetentionConfig = RetentionConfig()
    source: str = "(defaults)"


MAX_RETENTION_MONTHS = 1200  # a hundred years: past that, a typo
DEFAULT_FILE = "receiver.toml"
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


def load_config(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read the configuration the way every command does."""
    env = os.environ if environ is None else environ
    path = find_config_file(explicit, env)
    if path is None:
        return parse_config({}, source="(defaults)", base=Path.cwd(), environ=env)
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
    return parse_config(data, source=str(path), base=path.parent, environ=env)


def _os_problem(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def parse_config(data: Table, *, source: str, base: Path, environ: Mapping[str, str]) -> Config:
    """Build a Config from parsed TOML; relative paths are relative to `base`."""
    r = _Reader(source=source, base=base, environ=environ)
    r.only(
        data,
        "",
        {"server", "database", "log", "ledger", "gopay", "baofoo", "metrics", "reconcile"}
        | {"retention"},
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
        retention=r.retention(r.table(data, "retention")),
        source=source,
    )


@dataclass(frozen=True, slots=True)
class _Reader:
    """Typed access to TOML tables that reports errors by key path."""

    source: str
    base: Path
    environ: Mapping[str, str]

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(source=self.source, key=key, problem=problem)

    def environment_fail(self, variable: str, problem: str) -> ConfigError:
        return ConfigError(source=ENVIRONMENT, key=variable, problem=problem)

    def only(self, table: Table, prefix: str, allowed: set[str]) -> None:
        for key in table:
            if key not in allowed:
                raise self.fail(prefix + key, "unknown key")

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
        self.only(t, "metrics.", {"host", "port"})
        d = MetricsConfig()
        return MetricsConfig(
            host=self.get(t, "metrics.host", str, d.host), port=self.port(t, "metrics.port", d.port)
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
        )

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
        self.only(t, "database.", {"url", "data_dir", "pool_min", "pool_max"})
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
        )

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
        return BaofooMerchant(
            member_id=member_id,
            terminal_id=terminal_id,
            md5_key=self.secret(t, key, "md5_key", required=True),
        )

    def secret(self, t: Table, key: str, name: str, *, required: bool) -> str:
        """`name` inline or from the environment variable `{name}_env` names."""
        env_name = self.get(t, f"{key}.{name}_env", str, "")
        inline = self.get(t, f"{key}.{name}", str, "")
        if env_name and inline:
            raise self.fail(f"{key}.{name}", f"set {name} or {name}_env, not both")
        if env_name:
            return self.secret_from_environment(env_name, named_by=f"{key}.{name}_env")
        if required and not inline:
            raise self.fail(f"{key}.{name}", f"missing (set {name} or {name}_env)")
        if problem := _secret_problem(inline):
            raise self.fail(f"{key}.{name}", problem)
        return inline

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
