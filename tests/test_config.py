"""Configuration: TOML plus environment, errors that name file and key, secrets kept out."""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path

import pytest

from receiver.config import RetentionConfig, load_config, parse_config
from receiver.errors import ConfigError
from receiver.store import database

SPEC_EXAMPLE = """
[server]
host = "127.0.0.1"
port = 8080
max_body_bytes = 65536
trusted_proxies = ["10.0.0.0/8"]
tls_cert = ""
tls_key = ""

[database]
url = ""
data_dir = ".receiver"

[log]
format = "json"
level = "info"

[gopay]
timestamp_tolerance_s = 900
allowed_ips = []

[[gopay.merchants]]
mchid = "100001"
platform_public_keys = ["keys/gopay-platform.pem"]

[baofoo]
allowed_ips = []

[[baofoo.merchants]]
member_id = "100000178"
terminal_id = "10000001"
md5_key_env = "BAOFOO_MD5_KEY"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "receiver.toml"
    path.write_text(text)
    return path


def test_spec_example_loads_with_paths_relative_to_the_file(tmp_path):
    path = write(tmp_path, SPEC_EXAMPLE)
    cfg = load_config(str(path), {"BAOFOO_MD5_KEY": "s3cret-md5"})
    assert cfg.gopay.merchants[0].platform_public_keys == (tmp_path / "keys/gopay-platform.pem",)
    assert cfg.database.data_dir == tmp_path / ".receiver"
    assert cfg.server.trusted_proxies == (ipaddress.ip_network("10.0.0.0/8"),)
    assert cfg.baofoo.merchants[0].md5_key == "s3cret-md5"
    assert cfg.source == str(path)


def test_defaults_without_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, {})
    assert (cfg.server.port, cfg.gopay.timestamp_tolerance_s, cfg.log.format) == (8080, 900, "json")
    assert cfg.database.url == ""


def test_environment_chooses_file_and_database_url(tmp_path):
    path = write(tmp_path, '[database]\nurl = "postgresql://a@b/c"\n')
    cfg = load_config(
        None, {"RECEIVER_CONFIG": str(path), "RECEIVER_DATABASE_URL": "postgresql://x@y/z"}
    )
    assert cfg.database.url == "postgresql://x@y/z"


def test_secrets_stay_out_of_reprs(tmp_path):
    text = SPEC_EXAMPLE.replace('md5_key_env = "BAOFOO_MD5_KEY"', 'md5_key = "inline-md5-key"')
    path = write(tmp_path, text)
    cfg = load_config(str(path), {"RECEIVER_DATABASE_URL": "postgresql://u:pa55word@h/db"})
    assert "inline-md5-key" not in repr(cfg)
    assert "pa55word" not in repr(cfg)


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("[server]\nport = 70000\n", "server.port", "port number"),
        ('[server]\nport = "80"\n', "server.port", "an integer"),
        ("[server]\nprot = 1\n", "server.prot", "unknown key"),
        ('[server]\ntls_cert = "c.pem"\n', "server.tls_cert", "together"),
        ('[server]\ntrusted_proxies = ["nonsense"]\n', "server.trusted_proxies[0]", "CIDR"),
        ('[log]\nformat = "xml"\n', "log.format", "json"),
        ('[database]\nurl = "mysql://x"\n', "database.url", "postgresql://"),
        ('[database]\nurl = "postgresql://u@h:port/db"\n', "database.url", "not a valid URL"),
        ('[database]\nurl = "postgresql://u@[::1/db"\n', "database.url", "not a valid URL"),
        ("[gopay]\ntimestamp_tolerance_s = -1\n", "gopay.timestamp_tolerance_s", "0 or more"),
        (
            '[[gopay.merchants]]\nmchid = "1"\n',
            "gopay.merchants[0].platform_public_keys",
            "non-empty",
        ),
        ("[[baofoo.merchants]]\nmember_id = 1\n", "baofoo.merchants[0].terminal_id", "missing"),
        ("not toml at all", "(file)", "TOML"),
        ('[database]\npgbouncer = "yes"\n', "database.pgbouncer", "true or false"),
        ('[database]\nlisten_url = "mysql://x"\n', "database.listen_url", "postgresql://"),
        ("[metrics]\nmax_connections = 0\n", "metrics.max_connections", "greater than 0"),
        ("[retention]\nnotifications_months = -1\n", "retention.notifications_months", "0"),
        ("[retention]\nnotifications_months = 1.5\n", "retention.notifications_months", "integer"),
        ("[retention]\narchive_dir = 3\n", "retention.archive_dir", "string"),
        ("[retention]\nkeep = 3\n", "retention.keep", "unknown"),
    ],
)
def test_errors_name_file_key_and_problem(tmp_path, text, key, problem):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(str(path), {})
    assert (err.value.source, err.value.key) == (str(path), key)
    assert problem in err.value.problem
    assert str(err.value).startswith(f"{path}: {key}: ")


@pytest.mark.parametrize(
    ("text", "environ", "variable"),
    [
        ("", {"RECEIVER_DATABASE_URL": "mysql://x"}, "RECEIVER_DATABASE_URL"),
        (
            '[database]\nurl = "postgresql://h/db"\n',
            {"RECEIVER_DATABASE_URL": "x"},
            "RECEIVER_DATABASE_URL",
        ),
        ('[[baofoo.merchants]]\nmember_id = "1"\nterminal_id = "2"\nmd5_key_env = "K"\n', {}, "K"),
    ],
)
def test_errors_about_environment_values_name_the_variable_not_the_file(
    tmp_path, text, environ, variable
):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(str(path), environ)
    assert (err.value.source, err.value.key) == ("environment", variable)
    assert str(err.value).startswith(f"environment variable {variable}: ")
    assert str(path) not in str(err.value)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="No such file"):
        load_config(str(tmp_path / "absent.toml"), {})


def test_error_never_echoes_a_secret(tmp_path):
    text = (
        '[[baofoo.merchants]]\nmember_id = "1"\nterminal_id = "2"\n'
        'md5_key = "topsecret"\nmd5_key_env = "K"\n'
    )
    with pytest.raises(ConfigError) as err:
        parse_config(tomllib.loads(text), source="f.toml", base=tmp_path, environ={"K": "x"})
    assert "topsecret" not in str(err.value)


@pytest.mark.parametrize(
    "url",
    ["postgresql://u:p@h1:5432,h2:5433/db", "postgresql:///db?host=/run/pg", "postgres://[::1]/db"],
)
def test_database_urls_libpq_takes_are_taken(tmp_path, url):
    path = write(tmp_path, f'[database]\nurl = "{url}"\n')
    assert load_config(str(path), {}).database.url == url


def test_pgbouncer_listen_url_and_metrics_connections(tmp_path, monkeypatch):
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # no receiver.toml here: the defaults
    text = (
        '[database]\nurl = "postgresql://u:secret@pooler:6432/db"\npgbouncer = true\n'
        'listen_url = "postgresql://u:secret@postgres:5432/db"\n'
        "[metrics]\nmax_connections = 16\n"
    )
    cfg = load_config(str(write(tmp_path, text)), {})
    assert cfg.database.pgbouncer and cfg.metrics.max_connections == 16
    assert (
        database.listen_url(cfg, url=cfg.database.url) == "postgresql://u:secret@postgres:5432/db"
    )
    assert "secret" not in repr(cfg)
    defaults = load_config(None, {})
    assert not defaults.database.pgbouncer and defaults.metrics.max_connections == 64
    assert database.listen_url(defaults, url="postgresql://h/db") == "postgresql://h/db"


def test_through_pgbouncer_listening_needs_a_direct_listen_url(tmp_path):
    path = write(tmp_path, '[database]\nurl = "postgresql://pooler:6432/db"\npgbouncer = true\n')
    cfg = load_config(str(path), {})
    with pytest.raises(ConfigError) as err:
        database.listen_url(cfg, url=cfg.database.url)
    assert (err.value.source, err.value.key) == (str(path), "database.listen_url")
    assert "direct connection" in err.value.problem


def test_retention_keeps_for_ever_by_default_and_archives_relative_to_the_file(tmp_path):
    assert load_config(str(write(tmp_path, ""))).retention == RetentionConfig(0, None)
    text = '[retention]\nnotifications_months = 6\narchive_dir = "archive"\n'
    cfg = load_config(str(write(tmp_path, text)), {})
    assert cfg.retention == RetentionConfig(6, tmp_path / "archive")
