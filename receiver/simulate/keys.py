"""The stand-in gateway's keys, kept in one folder: read when there, generated when not.

The folder also holds the merchant's half (its private key and API key), so that the receiver's
configuration can point at it: the snippet `config_snippet` prints.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from receiver.errors import ConfigError
from receiver.gateways.gopay.signing import load_private_key_file
from receiver.simulate.signers import new_rsa_key, public_key_text

PLATFORM_PRIVATE = "gopay-platform-private.pem"
PLATFORM_PUBLIC = "gopay-platform-public.pem"
MERCHANT_PRIVATE = "gopay-merchant-private.pem"
API_KEY = "gopay-api-key"
MD5_KEY = "baofoo-md5-key"


@dataclass(frozen=True, slots=True)
class SimulatorKeys:
    """The platform's signing key, the merchant's key pair, the API key and the MD5 key."""

    folder: Path
    platform: RSAPrivateKey = field(repr=False)
    merchant: RSAPrivateKey = field(repr=False)
    api_key: str = field(repr=False)
    md5_key: str = field(repr=False)


def load_or_create(folder: Path) -> SimulatorKeys:
    """Read the keys in `folder`, generating (and writing) any that are missing."""
    folder.mkdir(parents=True, exist_ok=True)
    platform = _private_key(folder / PLATFORM_PRIVATE)
    public = folder / PLATFORM_PUBLIC
    if not public.exists():
        public.write_text(public_key_text(platform, "spki_pem"), encoding="ascii")
    return SimulatorKeys(
        folder=folder,
        platform=platform,
        merchant=_private_key(folder / MERCHANT_PRIVATE),
        api_key=_secret(folder / API_KEY),
        md5_key=_secret(folder / MD5_KEY),
    )


def _private_key(path: Path) -> RSAPrivateKey:
    if path.exists():
        return load_private_key_file(path, source=str(path.parent), key=path.name)
    key = new_rsa_key()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_private(path, pem)
    return key


def _secret(path: Path) -> str:
    if path.exists():
        try:
            text = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            text = ""
        if not text.isascii() or not text.isprintable() or not text:
            problem = "must hold one line of printable ASCII"
            raise ConfigError(source=str(path.parent), key=path.name, problem=problem)
        return text
    text = secrets.token_hex(16)
    _write_private(path, (text + "\n").encode("ascii"))
    return text


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def config_snippet(
    keys: SimulatorKeys,
    *,
    base_url: str,
    gopay_merchants: Sequence[str],
    baofoo_merchants: Sequence[tuple[str, str]],
) -> str:
    """The receiver's configuration for talking to this stand-in (TOML, absolute paths)."""
    folder = keys.folder.resolve()
    lines = ["[gopay]", f'api_url = "{base_url}"', ""]
    for mchid in gopay_merchants:
        lines += [
            "[[gopay.merchants]]",
            f'mchid = "{mchid}"',
            f'platform_public_keys = ["{folder / PLATFORM_PUBLIC}"]',
            f'private_key = "{folder / MERCHANT_PRIVATE}"',
            f'api_key = "{keys.api_key}"  # the stand-in\'s test key, from {folder / API_KEY}',
            'default_channel = "gopay_banktransfer"',
            "",
        ]
    lines += ["[baofoo]", f'query_url = "{base_url}/order/query"', ""]
    for member, terminal in baofoo_merchants:
        lines += [
            "[[baofoo.merchants]]",
            f'member_id = "{member}"',
            f'terminal_id = "{terminal}"',
            f'md5_key = "{keys.md5_key}"  # the stand-in\'s test key, from {folder / MD5_KEY}',
            "",
        ]
    return "\n".join(lines)
