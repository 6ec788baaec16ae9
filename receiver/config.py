"""Configuration: frozen dataclasses loaded from TOML plus environment.

Lookup: `--config F`, else `$RECEIVER_CONFIG`, else `receiver.toml` in the working directory,
else built-in defaults. `RECEIVER_DATABASE_URL` overrides `database.url`. Errors name the file,
the key and what is wrong, never a value: values may be secrets.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from receiver.errors import ConfigError

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


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    url: str = field(default="", repr=False)  # may carry a password
    data_dir: Path = Path(".receiver")
    pool_min: int = 2
    pool_max: int = 10


@dataclass(frozen=True, slots=True)
class LedgerConfig:
    batch_max: int = 64  # notifications written in one transaction at most; 1 = no batching
    batch_concurrency: int = 2  # batches being written at once (each holds a connection)


@dataclass(frozen=True, slots=True)
class LogConfig:
    format: str = "json"
    level: str = "info"


@dataclass(frozen=True, slots=True)
class GoPayMerchant:
    mchid: str
    platform_public_keys: tuple[Path, ...]


@dataclass(frozen=True, slots=True)
class GoPayConfig:
    timestamp_tolerance_s: int = 900
    allowed_ips: tuple[Network, ...] = ()
    merchants: tuple[GoPayMerchant, ...] = ()


@dataclass(frozen=True, slots=True)
class BaofooMerchant:
    member_id: str
    terminal_id: str
    md5_key: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class BaofooConfig:
    allowed_ips: tuple[Network, ...] = ()
    merchants: tuple[BaofooMerchant, ...] = ()


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = ServerConfig()
    database: DatabaseConfig = DatabaseConfig()
    log: LogConfig = LogConfig()
    ledger: LedgerConfig = LedgerConfig()
    gopay: GoPayConfig = GoPayConfig()
    baofoo: BaofooConfig = BaofooConfig()
    source: str = "(defaults)"


DEFAULT_FILE = "receiver.toml"


def find_config_file(explicit: str | None, environ: Mapping[str, str]) -> Path | None:
    """The file to read: --config, else $RECEIVER_CONFIG, else ./receiver.toml if present."""
    if explicit:
        return Path(explicit)
    if environ.get("RECEIVER_CONFIG"):
        return Path(environ["RECEIVER_CONFIG"])
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
    r.only(data, "", {"server", "database", "log", "ledger", "gopay", "baofoo"})
    return Config(
        server=r.server(r.table(data, "server")),
        database=r.database(r.table(data, "database")),
        log=r.log(r.table(data, "log")),
        ledger=r.ledger(r.table(data, "ledger")),
        gopay=r.gopay(r.table(data, "gopay")),
        baofoo=r.baofoo(r.table(data, "baofoo")),
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
            shutdown_timeout_s=self.checked(
                "server.shutdown_timeout_s",
                self.get(t, "server.shutdown_timeout_s", float, d.shutdown_timeout_s),
                lambda n: n > 0,
                positive,
            ),
        )

    def database(self, t: Table) -> DatabaseConfig:
        self.only(t, "database.", {"url", "data_dir", "pool_min", "pool_max"})
        d = DatabaseConfig()
        url = self.environ.get("RECEIVER_DATABASE_URL") or self.get(t, "database.url", str, "")
        if url and not url.startswith(("postgres://", "postgresql://")):
            raise self.fail("database.url", "must start with postgresql://")
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
        self.only(t, "gopay.", {"timestamp_tolerance_s", "allowed_ips", "merchants"})
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
        )

    def gopay_merchant(self, t: Table, key: str) -> GoPayMerchant:
        self.only(t, key + ".", {"mchid", "platform_public_keys"})
        mchid = self.required_str(t, key, "mchid")
        keys = self.get(t, f"{key}.platform_public_keys", list, [])
        if not keys or not all(isinstance(k, str) and k for k in keys):
            raise self.fail(f"{key}.platform_public_keys", "must be a non-empty list of file paths")
        return GoPayMerchant(
            mchid=mchid, platform_public_keys=tuple(self.path(key, k) for k in keys)
        )

    def baofoo(self, t: Table) -> BaofooConfig:
        self.only(t, "baofoo.", {"allowed_ips", "merchants"})
        merchants = tuple(
            self.baofoo_merchant(m, f"baofoo.merchants[{i}]")
            for i, m in enumerate(self.tables(t, "baofoo.merchants"))
        )
        self.unique(
            [f"{m.member_id}/{m.terminal_id}" for m in merchants],
            "baofoo.merchants",
            "member_id/terminal_id",
        )
        return BaofooConfig(allowed_ips=self.networks(t, "baofoo.allowed_ips"), merchants=merchants)

    def baofoo_merchant(self, t: Table, key: str) -> BaofooMerchant:
        self.only(t, key + ".", {"member_id", "terminal_id", "md5_key", "md5_key_env"})
        member_id = self.required_str(t, key, "member_id")
        terminal_id = self.required_str(t, key, "terminal_id")
        return BaofooMerchant(
            member_id=member_id, terminal_id=terminal_id, md5_key=self.md5_key(t, key)
        )

    def md5_key(self, t: Table, key: str) -> str:
        env_name = self.get(t, f"{key}.md5_key_env", str, "")
        inline = self.get(t, f"{key}.md5_key", str, "")
        if env_name and inline:
            raise self.fail(f"{key}.md5_key", "set md5_key or md5_key_env, not both")
        if env_name:
            value = self.environ.get(env_name, "")
            if not value:
                raise self.fail(f"{key}.md5_key_env", f"environment variable {env_name} is not set")
            return value
        if not inline:
            raise self.fail(f"{key}.md5_key", "missing (set md5_key or md5_key_env)")
        return inline

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


_LEVELS = ("debug", "info", "warning", "error")
_KIND_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    list: "a list",
    bool: "true or false",
}
