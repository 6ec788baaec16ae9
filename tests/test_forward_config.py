"""`[[forward]]` destinations in the configuration: read as SPEC writes them, refused clearly."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from receiver.config import ConfigError, load_config
from receiver.run.observe import summary

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123").decode()
EXAMPLE = """
[[forward]]
name = "shop"
url = "https://user:pw@shop.internal/hooks/payments?token=t0ken"
secret_env = "SHOP_WEBHOOK_SECRET"
types = ["order.paid"]
providers = ["gopay"]
timeout_s = 10
give_up_after_s = 259200
retry_s = [5, 30, 120]
"""


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    path = tmp_path / "receiver.toml"
    path.write_text(text)
    return load_config(str(path), environ or {})


def test_a_destination_is_read_with_its_secret_from_the_environment(tmp_path: Path) -> None:
    cfg = load(tmp_path, EXAMPLE, {"SHOP_WEBHOOK_SECRET": SECRET})
    (dest,) = cfg.forward
    assert (dest.name, dest.types, dest.providers) == ("shop", ("order.paid",), ("gopay",))
    assert (dest.secret, dest.timeout_s, dest.retry_s) == (SECRET, 10.0, (5.0, 30.0, 120.0))
    assert SECRET not in repr(cfg)
    shown = summary(cfg)["forward"]
    assert shown == [
        {
            "name": "shop",
            "url": "https://shop.internal/hooks/payments",
            "types": ["order.paid"],
            "providers": ["gopay"],
        }
    ]


def test_defaults_are_spec_s(tmp_path: Path) -> None:
    text = f'[[forward]]\nname = "a"\nurl = "http://127.0.0.1:1/"\nsecret = "{SECRET}"\n'
    (dest,) = load(tmp_path, text).forward
    assert (dest.types, dest.providers, dest.timeout_s, dest.give_up_after_s) == (
        (),
        (),
        10.0,
        259200,
    )
    assert dest.retry_s == (5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800)


BASE = f'name = "a"\nurl = "http://h/"\nsecret = "{SECRET}"\n'


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ('[[forward]]\nurl = "http://h/"\n', "forward[0].name", "missing"),
        ('[[forward]]\nname = "a b"\n', "forward[0].name", "letters"),
        ('[[forward]]\nname = "a"\n', "forward[0].url", "missing"),
        ('[[forward]]\nname = "a"\nurl = "ftp://h"\n', "forward[0].url", "http://"),
        ('[[forward]]\nname = "a"\nurl = "http://h/"\n', "forward[0].secret", "missing"),
        (
            '[[forward]]\nname = "a"\nurl = "http://h/"\nsecret = "s3cret"\n',
            "forward[0].secret",
            "whsec_",
        ),
        (
            '[[forward]]\nname = "a"\nurl = "http://h/"\nsecret = "whsec_!!"\n',
            "forward[0].secret",
            "base64",
        ),
        (f'[[forward]]\n{BASE}types = ["paid"]\n', "forward[0].types", "order.paid"),
        (f'[[forward]]\n{BASE}providers = ["wechat"]\n', "forward[0].providers", "gopay"),
        (f"[[forward]]\n{BASE}retry_s = []\n", "forward[0].retry_s", "non-empty"),
        (f"[[forward]]\n{BASE}timeout_s = 0\n", "forward[0].timeout_s", "greater than 0"),
        (f"[[forward]]\n{BASE}colour = 1\n", "forward[0].colour", "unknown key"),
        (f"[[forward]]\n{BASE}[[forward]]\n{BASE}", "forward", "appears twice"),
        ("forward = 1\n", "forward", "a list"),
    ],
)
def test_a_bad_destination_is_refused_naming_its_key(
    tmp_path: Path, text: str, key: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, text)
    assert err.value.key == key
    assert problem in err.value.problem
    assert SECRET not in str(err.value)


def test_a_missing_secret_variable_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, EXAMPLE, {})
    assert err.value.key == "SHOP_WEBHOOK_SECRET"
