"""The gateways' side: notifications built and signed exactly as GoPay and Baofoo do it.

Used by the stand-in gateway, `receiver demo`, the benchmark and the tests; never by the service.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from receiver.gateways.baofoo import baofoo_signature
from receiver.gateways.gopay.signing import new_nonce, now_ms, sign_charge

_SHORT_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "/": "\\/",  # PHP escapes slashes unless JSON_UNESCAPED_SLASHES
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}


def php_json_encode(value: Any) -> bytes:
    """Bytes as PHP `json_encode` with default flags produces them (Decimal emitted as-is)."""
    return _encode(value).encode("ascii")


def _encode(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int | Decimal):
        return str(value)
    if isinstance(value, str):
        return _encode_str(value)
    if isinstance(value, Mapping):
        members = (f"{_encode_str(str(k))}:{_encode(v)}" for k, v in value.items())
        return "{" + ",".join(members) + "}"
    if isinstance(value, Sequence):
        return "[" + ",".join(_encode(v) for v in value) + "]"
    raise TypeError(f"cannot encode {type(value).__name__}")


def _encode_str(text: str) -> str:
    return '"' + "".join(_encode_char(c) for c in text) + '"'


def _encode_char(char: str) -> str:
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    code = ord(char)
    if 0x20 <= code < 0x80:
        return char
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000  # astral: a UTF-16 surrogate pair, as PHP writes it
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def new_rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    """A fresh RSA private key."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def public_key_text(key: rsa.RSAPrivateKey | rsa.RSAPublicKey, fmt: str) -> str:
    """The public key as a merchant would paste it: "spki_pem", "pkcs1_pem" or "base64"."""
    public = key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key
    pem, der = serialization.Encoding.PEM, serialization.Encoding.DER
    spki, pkcs1 = serialization.PublicFormat.SubjectPublicKeyInfo, serialization.PublicFormat.PKCS1
    if fmt == "spki_pem":
        return public.public_bytes(pem, spki).decode("ascii")
    if fmt == "pkcs1_pem":
        return public.public_bytes(pem, pkcs1).decode("ascii")
    if fmt == "base64":
        return base64.b64encode(public.public_bytes(der, spki)).decode("ascii") + "\n"
    raise ValueError(f"unknown key format {fmt!r}")


class GoPaySimulator:
    """The GoPay platform: builds and signs notification bodies and headers."""

    def __init__(self, private_key: rsa.RSAPrivateKey) -> None:
        self.private_key = private_key

    @classmethod
    def generate(cls) -> GoPaySimulator:
        """A platform with a fresh 2048-bit key."""
        return cls(new_rsa_key())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.private_key.key_size} bits)"

    def public_key_pem(self) -> str:
        """The platform public key a merchant configures (SPKI PEM)."""
        return public_key_text(self.private_key, "spki_pem")

    def sign(self, charge: bytes, *, nonce: str, timestamp: str, base64_step: bool = True) -> str:
        """x-ca-signature over raw charge bytes (base64 step: the current platform builds)."""
        return sign_charge(
            self.private_key,
            nonce=nonce,
            timestamp=timestamp,
            charge=charge,
            base64_step=base64_step,
        )

    def headers(
        self,
        charge: bytes,
        *,
        nonce: str | None = None,
        timestamp: str | None = None,
        base64_step: bool = True,
    ) -> dict[str, str]:
        """The request headers the platform sends for these raw charge bytes."""
        nonce = new_nonce() if nonce is None else nonce
        timestamp = now_ms() if timestamp is None else timestamp
        return {
            "Content-Type": "application/json; charset=UTF-8",
            "X-Ca-Noncestr": nonce,
            "X-Ca-Timestamp": timestamp,
            "X-Ca-Signature": self.sign(
                charge, nonce=nonce, timestamp=timestamp, base64_step=base64_step
            ),
        }

    def notify(
        self,
        charge: Mapping[str, Any],
        *,
        nonce: str | None = None,
        timestamp: str | None = None,
        base64_step: bool = True,
    ) -> tuple[bytes, dict[str, str]]:
        """A full notification: PHP-encoded body and signed headers."""
        body = php_json_encode({"result_code": "OK", "result_msg": "SUCCESS", "charge": charge})
        headers = self.headers(
            php_json_encode(charge), nonce=nonce, timestamp=timestamp, base64_step=base64_step
        )
        return body, headers


class BaofooSimulator:
    """The Baofoo gateway: signed form posts with a merchant's MD5 key."""

    def __init__(self, *, md5_key: str) -> None:
        self.md5_key = md5_key

    def __repr__(self) -> str:
        return f"{type(self).__name__}(md5_key=[redacted])"

    def sign(self, fields: Mapping[str, str], *, encoding: str = "utf-8") -> dict[str, str]:
        """The fields with Md5Sign added."""
        return {**fields, "Md5Sign": baofoo_signature(fields, self.md5_key, encoding=encoding)}

    def notify(
        self,
        *,
        member_id: str,
        terminal_id: str,
        trans_id: str,
        fact_money: str,
        result: str = "1",
        result_desc: str = "01",
        additional_info: str = "",
        succ_time: str | None = None,
    ) -> tuple[bytes, dict[str, str]]:
        """A signed, urlencoded UTF-8 notification and its headers."""
        fields = {
            "MemberID": member_id,
            "TerminalID": terminal_id,
            "TransID": trans_id,
            "Result": result,
            "ResultDesc": result_desc,
            "FactMoney": fact_money,
            "AdditionalInfo": additional_info,
            "SuccTime": succ_time
            or time.strftime("%Y%m%d%H%M%S", time.gmtime(time.time() + 8 * 3600)),
        }
        body = urlencode(self.sign(fields)).encode("ascii")
        return body, {"Content-Type": "application/x-www-form-urlencoded"}
