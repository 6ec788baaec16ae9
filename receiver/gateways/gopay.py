"""GoPay adapter: verify the platform's RSA-SHA1 signature over the raw `charge` bytes, then parse.

Pure: no HTTP and no database; the only I/O is reading key files in `GoPayGateway.from_config`.
The signature covers `noncestr + "\\n" + timestamp + "\\n" + CHARGE`, where CHARGE is the `charge`
member's value exactly as it appears in the body (PHP `json_encode` bytes), so the span is found
by scanning the body, never by re-serialising the parsed object.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from receiver.config import GoPayConfig, Network
from receiver.errors import ConfigError, Rejected
from receiver.gateways import Reply, http_status
from receiver.notification import Inbound, Notification, Outcome, Status, is_identifier

PROVIDER = "gopay"
MIN_KEY_BITS = 2048
DENIED_KEY_PROBLEM = "the platform's published default key: anyone can sign with it"

SUCCESS_BODY = b'{"result_code":"OK","result_msg":"SUCCESS"}'
FAIL_BODY = b'{"result_code":"OK","result_msg":"FAIL"}'

NONCE_HEADER = "x-ca-noncestr"
TIMESTAMP_HEADER = "x-ca-timestamp"
SIGNATURE_HEADER = "x-ca-signature"


_UTF8_CHARSETS = frozenset({"utf-8", "utf8"})
_TS_DIGITS = {13: 3, 16: 6, 19: 9}  # digits -> decimal places to seconds (ms, us, ns)
_TS_INTEGER = re.compile(r"[0-9]+")
_TS_FLOAT = re.compile(r"[0-9](\.[0-9]+)?[eE]\+?[0-9]{1,2}")  # PHP float text, in ms
_AMOUNT = re.compile(r"[0-9]{1,15}(\.[0-9]{1,3})?")
_CURRENCY = re.compile(r"[A-Z]{3}")
_STATUS_TEXT = re.compile(r"[0-9]{1,3}")
_STATUSES: dict[int, Status | None] = {
    0: Status.CLOSED,
    1: None,  # still waiting for payment
    2: Status.PAID,
    3: Status.FAILED,
}
_HINT_MAX = 64  # unverified ids kept for the record are cut to a sane length


class GoPayGateway:
    """The GoPay notification adapter (see PROTOCOL.md, GoPay)."""

    provider = PROVIDER

    def __init__(
        self,
        *,
        merchants: Mapping[str, Sequence[RSAPublicKey]],
        timestamp_tolerance_s: int,
        clock: Callable[[], float] = time.time,
        allowed_ips: tuple[Network, ...] = (),
    ) -> None:
        self.merchants: dict[str, tuple[RSAPublicKey, ...]] = {
            mchid: tuple(keys) for mchid, keys in merchants.items()
        }
        self.timestamp_tolerance_s = timestamp_tolerance_s
        self.clock = clock
        self.allowed_ips = allowed_ips

    def __repr__(self) -> str:
        return f"GoPayGateway(merchants={sorted(self.merchants)!r})"

    @classmethod
    def from_config(cls, cfg: GoPayConfig, *, source: str) -> GoPayGateway:
        """Build the adapter, loading and vetting every configured platform key file."""
        merchants = {
            m.mchid: tuple(
                load_key_file(path, source=source, key=_key_path(i, j))
                for j, path in enumerate(m.platform_public_keys)
            )
            for i, m in enumerate(cfg.merchants)
        }
        return cls(
            merchants=merchants,
            timestamp_tolerance_s=cfg.timestamp_tolerance_s,
            allowed_ips=cfg.allowed_ips,
        )

    def parse(self, inbound: Inbound) -> Notification:
        """Verify and parse one notification; raise `Rejected` with the outcome otherwise."""
        check_content_type(inbound)
        charge_bytes, charge = read_charge(inbound.body)
        try:
            return self._verified(inbound, charge_bytes=charge_bytes, charge=charge)
        except Rejected as exc:
            # Best effort, even unverified: the rejection is recorded against these ids.
            if exc.merchant_id is None:
                exc.merchant_id = self._merchant_hint(charge)
            if exc.out_trade_no is None:
                exc.out_trade_no = _hint(charge.get("out_trade_no"))
            raise

    def reply(self, outcome: Outcome | None) -> Reply:
        """SUCCESS for accepted outcomes, FAIL (so the platform retries) for anything else."""
        accepted = outcome is not None and outcome.accepted
        return Reply(
            status=http_status(outcome),
            body=SUCCESS_BODY if accepted else FAIL_BODY,
            content_type="application/json",
        )

    def _verified(
        self, inbound: Inbound, *, charge_bytes: bytes, charge: dict[str, Any]
    ) -> Notification:
        headers = SignatureHeaders.from_mapping(inbound.headers)
        mchid = self._merchant_id(charge)
        variant = verify_signature(self.merchants[mchid], headers=headers, charge=charge_bytes)
        if variant is None:
            raise Rejected(
                Outcome.BAD_SIGNATURE,
                "signature does not verify with any of the merchant's platform keys",
                merchant_id=mchid,
            )
        self._check_fresh(headers.timestamp)
        fresh_checked = self.timestamp_tolerance_s > 0
        return build_notification(
            charge,
            merchant_id=mchid,
            headers=headers,
            nonce=headers.nonce if fresh_checked else None,
            detail=f"signature={variant}",
        )

    def _merchant_id(self, charge: Mapping[str, Any]) -> str:
        claimed = claimed_merchant(charge)
        if claimed is None:
            if len(self.merchants) == 1:
                return next(iter(self.merchants))
            raise Rejected(Outcome.UNKNOWN_MERCHANT, "charge names no merchant (mid)")
        if claimed not in self.merchants:
            raise Rejected(Outcome.UNKNOWN_MERCHANT, "merchant is not configured")
        return claimed

    def _merchant_hint(self, charge: Mapping[str, Any]) -> str | None:
        try:
            claimed = claimed_merchant(charge)
        except Rejected:
            return None
        if claimed is None and len(self.merchants) == 1:
            return next(iter(self.merchants))
        return None if claimed is None else claimed[:_HINT_MAX]

    def _check_fresh(self, timestamp: str) -> None:
        if self.timestamp_tolerance_s <= 0:
            return
        try:
            sent = parse_timestamp(timestamp)
        except ValueError:
            raise _malformed("x-ca-timestamp is not an epoch in ms, us or ns") from None
        skew = abs(sent - Decimal(self.clock()))
        if skew > self.timestamp_tolerance_s:
            raise Rejected(Outcome.EXPIRED, "x-ca-timestamp is outside the accepted window")


# --- keys -------------------------------------------------------------------------------------


def load_public_key(text: str) -> RSAPublicKey:
    """An RSA public key from SPKI PEM, PKCS#1 PEM or bare base64 (SPKI or PKCS#1 DER)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        raise ValueError("empty key text")
    try:
        if lines[0].startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(("\n".join(lines) + "\n").encode("ascii"))
        else:
            der = base64.b64decode("".join(lines).encode("ascii"), validate=True)
            key = serialization.load_der_public_key(der)
    except (binascii.Error, UnsupportedAlgorithm) as exc:
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


def _key_path(merchant: int, key: int) -> str:
    return f"gopay.merchants[{merchant}].platform_public_keys[{key}]"


def load_key_file(path: Path, *, source: str, key: str) -> RSAPublicKey:
    """Read and vet one configured key file; ConfigError names the key path, never the key."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        problem = f"cannot read {path}: {exc.strerror or type(exc).__name__}"
        raise ConfigError(source=source, key=key, problem=problem) from None
    except UnicodeDecodeError:
        text = ""  # binary: falls through to "not an RSA public key"
    try:
        public_key = load_public_key(text)
    except ValueError:
        problem = f"{path} is not an RSA public key (PEM or one base64 line)"
        raise ConfigError(source=source, key=key, problem=problem) from None
    refused = key_problem(public_key)
    if refused is not None:
        raise ConfigError(source=source, key=key, problem=f"{path}: {refused}")
    return public_key


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
        lowered = {str(k).lower(): v for k, v in headers.items()}
        found: dict[str, str] = {}
        for name in (NONCE_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER):
            value = lowered.get(name)
            if not isinstance(value, str) or not value:
                raise Rejected(Outcome.BAD_SIGNATURE, f"{name} header is missing")
            if not value.isascii():
                raise Rejected(Outcome.BAD_SIGNATURE, f"{name} header is not ASCII")
            found[name] = value
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
    stripped = text.strip()
    try:
        raw = base64.b64decode(stripped.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise Rejected(Outcome.BAD_SIGNATURE, "x-ca-signature is not base64") from None
    if not raw or base64.b64encode(raw).decode("ascii") != stripped:
        raise Rejected(Outcome.BAD_SIGNATURE, "x-ca-signature is not canonical base64")
    return raw


def verify_signature(
    keys: Sequence[RSAPublicKey], *, headers: SignatureHeaders, charge: bytes
) -> str | None:
    """The variant ("base64" or "plain") that verifies with one of `keys`, else None."""
    signature = decode_signature(headers.signature)
    plain = signed_text(nonce=headers.nonce, timestamp=headers.timestamp, charge=charge)
    variants = (("base64", base64.b64encode(plain)), ("plain", plain))
    for name, message in variants:
        if any(_rsa_sha1_ok(key, signature=signature, message=message) for key in keys):
            return name
    return None


def _rsa_sha1_ok(key: RSAPublicKey, *, signature: bytes, message: bytes) -> bool:
    try:
        key.verify(signature, message, padding.PKCS1v15(), hashes.SHA1())  # noqa: S303
    except InvalidSignature:
        return False
    return True


def parse_timestamp(text: str) -> Decimal:
    """Seconds since the epoch from 13/16/19 digits (ms/us/ns) or PHP float text (ms)."""
    if _TS_INTEGER.fullmatch(text) and len(text) in _TS_DIGITS:
        return Decimal(text).scaleb(-_TS_DIGITS[len(text)])
    if _TS_FLOAT.fullmatch(text):
        return Decimal(text).scaleb(-3)
    raise ValueError("not an epoch timestamp")


# --- body -------------------------------------------------------------------------------------


def check_content_type(inbound: Inbound) -> None:
    """Only JSON in UTF-8 is accepted (415 otherwise)."""
    mime = inbound.content_type.split(";", 1)[0].strip().lower()
    if mime != "application/json":
        raise Rejected(Outcome.MALFORMED, "content type must be application/json", http_status=415)
    if inbound.charset is not None and inbound.charset.strip().lower() not in _UTF8_CHARSETS:
        raise Rejected(Outcome.MALFORMED, "charset must be UTF-8", http_status=415)


def read_charge(body: bytes) -> tuple[bytes, dict[str, Any]]:
    """The raw charge bytes and the charge parsed from exactly those bytes, in one pass."""
    text = _json_text(body)
    (start, end), charge = _scan_charge(text)
    return body[_byte_offset(text, start) : _byte_offset(text, end)], charge


def find_charge_span(body: bytes) -> tuple[int, int]:
    """The byte span [start, end) of the top-level `charge` object, from `{` to its `}`."""
    text = _json_text(body)
    (start, end), _ = _scan_charge(text)
    return _byte_offset(text, start), _byte_offset(text, end)


def load_json(data: bytes) -> Any:
    """Strict JSON: UTF-8, Decimal numbers, no NaN/Infinity, no duplicate keys."""
    try:
        return _DECODER.decode(data.decode("utf-8"))
    except (ValueError, RecursionError):
        raise _malformed("body is not valid JSON") from None


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key")
    return result


# The standard library's C scanner walks the top-level object: each member value is parsed once,
# and its end position marks exactly where its bytes stop. Nothing is re-serialised.
_DECODER = json.JSONDecoder(
    parse_float=Decimal, parse_constant=_no_constant, object_pairs_hook=_unique_keys
)
_WS = re.compile(r"[ \t\n\r]*")
scanstring: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]


def _json_text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise _malformed("body is not UTF-8") from None


def _byte_offset(text: str, index: int) -> int:
    # PHP's json_encode writes ASCII only; other senders may send raw UTF-8.
    return index if text.isascii() else len(text[:index].encode("utf-8"))


def _scan_charge(text: str) -> tuple[tuple[int, int], dict[str, Any]]:
    """The character span of the top-level `charge` object and its parsed value."""
    found: tuple[tuple[int, int], dict[str, Any]] | None = None
    try:
        for key, start, end, value in _top_level_members(text):
            if key != "charge":
                continue
            if not isinstance(value, dict):
                raise _malformed("charge is not an object")
            found = ((start, end), value)
    except (ValueError, RecursionError):  # json.JSONDecodeError is a ValueError
        raise _malformed("body is not valid JSON") from None
    if found is None:
        raise _malformed("charge is missing")
    return found


def _top_level_members(text: str) -> Iterator[tuple[str, int, int, Any]]:
    """(key, value start, value end, parsed value) for each member of the top-level object."""
    pos = _skip(text, 0)
    if text[pos : pos + 1] != "{":
        raise _malformed("body is not a JSON object")
    pos = _skip(text, pos + 1)
    keys: set[str] = set()
    while text[pos : pos + 1] != "}" or keys:
        key, start, end, value = _member(text, pos, keys)
        yield key, start, end, value
        pos = _skip(text, end)
        separator = text[pos : pos + 1]
        if separator == "}":
            break
        if separator != ",":
            raise _malformed("expected ',' or '}'")
        pos = _skip(text, pos + 1)
    if _skip(text, pos + 1) != len(text):
        raise _malformed("data after the top-level object")


def _member(text: str, pos: int, keys: set[str]) -> tuple[str, int, int, Any]:
    if text[pos : pos + 1] != '"':
        raise _malformed("expected a member name")
    # Decoded, so an escaped spelling of "charge" is still found (and still counted twice).
    key, pos = scanstring(text, pos + 1)
    if key in keys:
        raise _malformed(f"{'charge' if key == 'charge' else 'a member name'} appears twice")
    keys.add(key)
    pos = _skip(text, pos)
    if text[pos : pos + 1] != ":":
        raise _malformed("expected ':' after a member name")
    start = _skip(text, pos + 1)
    value, end = _DECODER.raw_decode(text, start)
    return key, start, end, value


def _skip(text: str, pos: int) -> int:
    match = _WS.match(text, pos)
    return match.end() if match else pos


def _malformed(reason: str) -> Rejected:
    return Rejected(Outcome.MALFORMED, reason)


# --- business fields --------------------------------------------------------------------------


def build_notification(
    charge: Mapping[str, Any],
    *,
    merchant_id: str,
    headers: SignatureHeaders,
    nonce: str | None,
    detail: str,
) -> Notification:
    """The gateway-neutral notification for a verified charge."""
    out_trade_no = text_field(charge, "out_trade_no")
    if not out_trade_no:
        raise _malformed("out_trade_no is missing or empty")
    if not is_identifier(out_trade_no):
        raise _malformed("out_trade_no is too long or not printable")
    amount = amount_field(charge, "amount")
    paid = amount if "pay_amount" not in charge else amount_field(charge, "pay_amount")
    return Notification(
        provider=PROVIDER,
        merchant_id=merchant_id,
        out_trade_no=out_trade_no,
        target=status_field(charge),
        paid_amount_minor=paid,
        order_amount_minor=amount,
        currency=currency_field(charge),
        provider_trade_no=provider_trade_no(charge),
        signed_headers=headers.as_dict(),
        nonce=nonce,
        detail=detail,
    )


def claimed_merchant(charge: Mapping[str, Any]) -> str | None:
    """The merchant id the (unverified) charge names in `mid` or `mchid`, if any."""
    ids = {text_field(charge, name) for name in ("mid", "mchid") if charge.get(name) is not None}
    if len(ids) > 1:
        raise _malformed("mid and mchid disagree")
    claimed = ids.pop() if ids else None
    if claimed == "":
        raise _malformed("mid is empty")
    return claimed


def text_field(charge: Mapping[str, Any], name: str) -> str | None:
    """A string field; a JSON integer counts as its decimal text (PHP ids are often numbers)."""
    value = charge.get(name)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise _malformed(f"{name} must be a string")


def provider_trade_no(charge: Mapping[str, Any]) -> str | None:
    """The platform's order number from `trade_no` or `in_trade_no`; empty means none."""
    for name in ("trade_no", "in_trade_no"):
        value = text_field(charge, name)
        if value:
            if not is_identifier(value):
                raise _malformed(f"{name} is too long or not printable")
            return value
    return None


def amount_field(charge: Mapping[str, Any], name: str) -> int:
    """A required amount field in minor units."""
    try:
        return parse_amount_minor(charge[name])
    except KeyError:
        raise _malformed(f"{name} is missing") from None
    except ValueError:
        raise _malformed(f"{name} is not an amount with at most 2 significant decimals") from None


def parse_amount_minor(value: object) -> int:
    """Minor units (fen) from `"100.000"`, `"1.66"` or a JSON number; ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise ValueError("not a number")
    text = str(value)  # Decimal keeps its JSON spelling, so 1e3 stays exponent notation
    if not _AMOUNT.fullmatch(text):
        raise ValueError("not a plain decimal amount")
    minor = Decimal(text) * 100
    if minor != minor.to_integral_value():
        raise ValueError("not a whole number of minor units")
    return int(minor)


def currency_field(charge: Mapping[str, Any]) -> str:
    """The required ISO currency code."""
    value = charge.get("currency")
    if not isinstance(value, str) or not _CURRENCY.fullmatch(value):
        raise _malformed("currency must be a 3-letter upper-case code")
    return value


def status_field(charge: Mapping[str, Any]) -> Status | None:
    """The target status; builds that notify only payments omit `status`, meaning paid."""
    if "status" not in charge:
        return Status.PAID
    try:
        return parse_status(charge["status"])
    except ValueError:
        raise _malformed("status must be 0, 1, 2 or 3") from None


def parse_status(value: object) -> Status | None:
    """GoPay's status code (number or numeric string) as a target; None for 'waiting'."""
    if isinstance(value, str) and _STATUS_TEXT.fullmatch(value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value not in _STATUSES:
        raise ValueError("unknown status")
    return _STATUSES[value]


def _hint(value: object) -> str | None:
    """An unverified id for the record: strings and integers only, cut short."""
    if isinstance(value, str) and value:
        return value[:_HINT_MAX]
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)[:_HINT_MAX]
    return None
