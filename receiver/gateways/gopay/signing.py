"""GoPay's signing, both directions: RSA-SHA1 over the base64 of a signed text, the platform's
over `nonce`, `timestamp` and the raw `charge` bytes (notifications, order-query replies), the
merchant's over path, query, nonce, timestamp and body (order-query requests); the keys for both.

Pure: the only I/O is reading key files in `load_key_file` and `load_private_key_file`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import TypeVar

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from receiver.core.notification import Outcome, named_headers
from receiver.errors import ConfigError, Rejected

K = TypeVar("K", RSAPublicKey, RSAPrivateKey)
MIN_KEY_BITS = 2048
DENIED_KEY_PROBLEM = "the platform's published default key: anyone can sign with it"

NONCE_HEADER = "x-ca-noncestr"
TIMESTAMP_HEADER = "x-ca-timestamp"
SIGNATURE_HEADER = "x-ca-signature"
AUTH_HEADER = "x-ca-auth"  # the merchant's API key, on order queries
RESTURL_HEADER = "x-ca-resturl"  # the full URL, on order queries
SIGNATURE_HEADERS = (NONCE_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER)

MAX_NONCE_LENGTH = 64  # the platform sends 32; the nonce index refuses very long text

# x-ca-timestamp as PHP prints a float: integer, fixed-point or exponent text; the value's order
# of magnitude (10^12, 10^15, 10^18) says ms, us or ns, however it is written.
_TS_TEXT = re.compile(r"[0-9]{1,24}(?:\.[0-9]{1,24})?(?:[eE]\+?[0-9]{1,2})?")
_TS_SCALE = {12: 3, 15: 6, 18: 9}  # order of magnitude -> decimal places to seconds

# SHA1withRSA is what the platform speaks, not our choice. Both objects are stateless: built once
# rather than on every notification.
_PKCS1V15 = padding.PKCS1v15()
_SHA1 = hashes.SHA1()  # noqa: S303

# --- keys -------------------------------------------------------------------------------------


def _pem_or_der(text: str) -> tuple[bytes, bool]:
    """The key's bytes and whether they are PEM, else DER from one base64 text; ValueError."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        raise ValueError("empty key text")
    if lines[0].startswith("-----BEGIN"):
        return ("\n".join(lines) + "\n").encode("ascii"), True
    # binascii.Error and UnicodeEncodeError are ValueErrors too.
    return base64.b64decode("".join(lines).encode("ascii"), validate=True), False


def load_public_key(text: str) -> RSAPublicKey:
    """An RSA public key from SPKI PEM, PKCS#1 PEM or bare base64 (SPKI or PKCS#1 DER)."""
    data, pem = _pem_or_der(text)
    try:
        if pem:
            key = serialization.load_pem_public_key(data)
        else:
            key = serialization.load_der_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:  # DER that is not a key
        raise ValueError("not a public key") from exc
    if not isinstance(key, RSAPublicKey):
        raise ValueError("not an RSA public key")
    return key


def spki_der(key: RSAPublicKey) -> bytes:
    """The key's normalised form: SubjectPublicKeyInfo DER."""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@functools.cache
def denied_keys() -> frozenset[bytes]:
    """SPKI DER of every key on the packaged deny list."""
    text = resources.files("receiver.data").joinpath("gopay_denied_keys.txt").read_text("utf-8")
    entries = (line.strip() for line in text.splitlines())
    return frozenset(spki_der(load_public_key(e)) for e in entries if e and not e.startswith("#"))


def key_problem(key: RSAPublicKey) -> str | None:
    """Why a platform key must not be trusted, or None when it may be."""
    if key.key_size < MIN_KEY_BITS:
        return f"key is {key.key_size} bits, shorter than {MIN_KEY_BITS}"
    if spki_der(key) in denied_keys():
        return f"key is on the deny list: {DENIED_KEY_PROBLEM}"
    return None


def load_key_file(path: Path, *, source: str, key: str) -> RSAPublicKey:
    """Read and vet one configured key file; ConfigError names the key path, never the key."""
    public_key = _key_file(path, source=source, key=key, parse=load_public_key, what="public")
    refused = key_problem(public_key)
    if refused is not None:
        raise ConfigError(source=source, key=key, problem=f"{path}: {refused}")
    return public_key


def _key_file(path: Path, *, source: str, key: str, parse: Callable[[str], K], what: str) -> K:
    """One key file parsed by `parse`; unreadable or unparsable is a ConfigError (no key text)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        problem = f"cannot read {path}: {exc.strerror or type(exc).__name__}"
        raise ConfigError(source=source, key=key, problem=problem) from None
    except UnicodeDecodeError:
        text = ""  # binary: falls through to "not an RSA key"
    try:
        return parse(text)
    except ValueError:
        problem = f"{path} is not an RSA {what} key (PEM or one base64 line)"
        raise ConfigError(source=source, key=key, problem=problem) from None


def load_private_key(text: str) -> RSAPrivateKey:
    """An RSA private key from PEM (PKCS#8 or PKCS#1) or bare base64 DER; ValueError otherwise."""
    data, pem = _pem_or_der(text)
    try:
        if pem:
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_der_private_key(data, password=None)
    except (UnsupportedAlgorithm, TypeError) as exc:
        # TypeError: the PEM is encrypted and no password was given.
        raise ValueError("not a private key") from exc
    if not isinstance(key, RSAPrivateKey):
        raise ValueError("not an RSA private key")
    return key


def load_private_key_file(path: Path, *, source: str, key: str) -> RSAPrivateKey:
    """Read one configured private key file; ConfigError names the key path, never the key."""
    parse, what = load_private_key, "unencrypted private"
    private_key = _key_file(path, source=source, key=key, parse=parse, what=what)
    if private_key.key_size < MIN_KEY_BITS:
        problem = f"{path}: key is {private_key.key_size} bits, shorter than {MIN_KEY_BITS}"
        raise ConfigError(source=source, key=key, problem=problem)
    return private_key


def new_nonce() -> str:
    """32 random upper-case hex characters, like the platform's x-ca-noncestr."""
    return secrets.token_hex(16).upper()


def now_ms() -> str:
    """The current epoch in milliseconds, as x-ca-timestamp is sent."""
    return str(int(time.time() * 1000))


# --- signature --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignatureHeaders:
    """The three x-ca-* headers, values verbatim (they are signed as received)."""

    nonce: str
    timestamp: str
    signature: str

    @classmethod
    def from_mapping(cls, headers: Mapping[str, str]) -> SignatureHeaders:
        """Look the headers up case-insensitively; a missing or non-ASCII one is BAD_SIGNATURE."""
        given = named_headers(headers, SIGNATURE_HEADERS)
        found: dict[str, str] = {}
        for name in SIGNATURE_HEADERS:
            value = given.get(name)
            if not isinstance(value, str) or not value:
                raise Rejected(Outcome.BAD_SIGNATURE, f"{name} header is missing")
            if not value.isascii():
                raise Rejected(Outcome.BAD_SIGNATURE, f"{name} header is not ASCII")
            found[name] = value
        if len(found[NONCE_HEADER]) > MAX_NONCE_LENGTH:
            too_long = f"{NONCE_HEADER} is over {MAX_NONCE_LENGTH} characters"
            raise Rejected(Outcome.MALFORMED, too_long)
        return cls(
            nonce=found[NONCE_HEADER],
            timestamp=found[TIMESTAMP_HEADER],
            signature=found[SIGNATURE_HEADER],
        )

    def as_dict(self) -> dict[str, str]:
        """Lower-case names to verbatim values, as kept with the raw notification."""
        return {
            NONCE_HEADER: self.nonce,
            TIMESTAMP_HEADER: self.timestamp,
            SIGNATURE_HEADER: self.signature,
        }


def signed_text(*, nonce: str, timestamp: str, charge: bytes) -> bytes:
    """The legacy (plain) signed text; the current variant signs its base64."""
    return nonce.encode("ascii") + b"\n" + timestamp.encode("ascii") + b"\n" + charge


def decode_signature(text: str) -> bytes:
    """The signature bytes; only canonical base64 is accepted, so a signature has one spelling."""
    try:
        encoded = text.strip().encode("ascii")
        # What base64.b64decode(validate=True) runs, without its wrapper.
        raw = binascii.a2b_base64(encoded, strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        raise Rejected(Outcome.BAD_SIGNATURE, "x-ca-signature is not base64") from None
    if not raw or binascii.b2a_base64(raw, newline=False) != encoded:
        raise Rejected(Outcome.BAD_SIGNATURE, "x-ca-signature is not canonical base64")
    return raw


def request_signed_text(*, path: str, query: str, nonce: str, timestamp: str, body: bytes) -> bytes:
    """An order query's signed text: path, query (empty when none), nonce, timestamp, body."""
    head = "\n".join((path, query, nonce, timestamp)).encode("ascii")
    return head + b"\n" + body


def rsa_sha1_sign(key: RSAPrivateKey, message: bytes) -> str:
    """base64(RSA-PKCS1v15-SHA1-sign(key, message)): both directions sign this way."""
    signature = key.sign(message, _PKCS1V15, _SHA1)
    return base64.b64encode(signature).decode("ascii")


def sign_charge(
    key: RSAPrivateKey, *, nonce: str, timestamp: str, charge: bytes, base64_step: bool = True
) -> str:
    """The platform's x-ca-signature over raw charge bytes (without base64 step: old builds)."""
    plain = signed_text(nonce=nonce, timestamp=timestamp, charge=charge)
    return rsa_sha1_sign(key, base64.b64encode(plain) if base64_step else plain)


def sign_request(
    key: RSAPrivateKey, *, path: str, query: str, nonce: str, timestamp: str, body: bytes
) -> str:
    """The merchant's x-ca-signature of an order query."""
    text = request_signed_text(path=path, query=query, nonce=nonce, timestamp=timestamp, body=body)
    return rsa_sha1_sign(key, base64.b64encode(text))


def verify_request(
    key: RSAPublicKey, *, path: str, query: str, headers: SignatureHeaders, body: bytes
) -> bool:
    """True when an order query's x-ca-signature verifies with the merchant's public key."""
    signature = decode_signature(headers.signature)
    text = request_signed_text(
        path=path, query=query, nonce=headers.nonce, timestamp=headers.timestamp, body=body
    )
    return _rsa_sha1_ok(key, signature, base64.b64encode(text))


def signed_variants(*, headers: SignatureHeaders, charge: bytes) -> tuple[tuple[str, bytes], ...]:
    """What a notification's signature may cover, by variant name: the base64 of the signed
    text (current builds), then the plain text (old builds)."""
    plain = signed_text(nonce=headers.nonce, timestamp=headers.timestamp, charge=charge)
    return (("base64", binascii.b2a_base64(plain, newline=False)), ("plain", plain))


def verify_signature(
    keys: Sequence[RSAPublicKey], *, headers: SignatureHeaders, charge: bytes
) -> str | None:
    """The variant ("base64" or "plain") that verifies with one of `keys`, else None."""
    signature = decode_signature(headers.signature)
    for name, message in signed_variants(headers=headers, charge=charge):
        for key in keys:
            if _rsa_sha1_ok(key, signature, message):
                return name
    return None


@dataclass(frozen=True, slots=True)
class Trial:
    """One key tried with one variant of the signed text, and whether the signature verified."""

    key: str  # the key's fingerprint, never the key
    variant: str
    verified: bool


def trace_signature(
    keys: Sequence[RSAPublicKey], *, headers: SignatureHeaders, charge: bytes
) -> tuple[Trial, ...]:
    """Every key with every variant, as `verify_signature` tries them (it stops at the first
    that verifies); for `receiver explain`."""
    signature = decode_signature(headers.signature)
    return tuple(
        Trial(key_fingerprint(key), name, _rsa_sha1_ok(key, signature, message))
        for name, message in signed_variants(headers=headers, charge=charge)
        for key in keys
    )


def key_fingerprint(key: RSAPublicKey) -> str:
    """A public key's short name: the start of the SHA-256 of its SubjectPublicKeyInfo DER
    (`openssl pkey -pubin -outform DER | sha256sum` gives the same digits)."""
    return "sha256:" + hashlib.sha256(spki_der(key)).hexdigest()[:FINGERPRINT_DIGITS]


FINGERPRINT_DIGITS = 16


def _rsa_sha1_ok(key: RSAPublicKey, signature: bytes, message: bytes) -> bool:
    try:
        key.verify(signature, message, _PKCS1V15, _SHA1)
    except InvalidSignature:
        return False
    return True


def timestamp_skew(timestamp: str, *, now: float) -> Decimal:
    """Seconds from `now` to the x-ca-timestamp sent (negative: sent before `now`); ValueError
    when the text is not an epoch in ms, us or ns."""
    return parse_timestamp(timestamp) - Decimal(now)


def within_tolerance(skew: Decimal, tolerance_s: int) -> bool:
    """True when a timestamp `skew` seconds off the clock is accepted (either direction)."""
    return abs(skew) <= tolerance_s


def expired_reason(skew: Decimal, tolerance_s: int) -> str:
    """Why a timestamp is refused, with the numbers: how far off, which way, the tolerance."""
    direction = "behind" if skew < 0 else "ahead of"
    off = abs(skew).quantize(_MILLISECOND)
    return f"x-ca-timestamp is {off} s {direction} the service's clock (tolerance {tolerance_s} s)"


_MILLISECOND = Decimal("0.001")


def parse_timestamp(text: str) -> Decimal:
    """Seconds since the epoch from ms, us or ns text (integer, fixed-point or exponent)."""
    if _TS_TEXT.fullmatch(text) is None:
        raise ValueError("not an epoch timestamp")
    value = Decimal(text)
    places = _TS_SCALE.get(value.adjusted())
    if places is None:
        raise ValueError("not an epoch in ms, us or ns")
    return value.scaleb(-places)
