"""GoPay notifications: verify the platform's signature over the raw `charge` bytes, then parse.

Pure: no HTTP and no database; the only I/O is reading key files in `GoPayGateway.from_config`.
Signing lives in `signing.py`, the charge span scanner in `jsonspan.py`.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from receiver.config import GoPayConfig
from receiver.core.addresses import Network
from receiver.core.notification import Inbound, Notification, Outcome, Status, is_identifier
from receiver.errors import Rejected
from receiver.gateways import Dialect
from receiver.gateways.gopay.jsonspan import Envelope, read_envelope
from receiver.gateways.gopay.jsonspan import malformed as _malformed
from receiver.gateways.gopay.signing import (
    SIGNATURE_HEADERS,
    SignatureHeaders,
    expired_reason,
    load_key_file,
    signed_text,
    timestamp_skew,
    trace_signature,
    verify_signature,
    within_tolerance,
)

PROVIDER = "gopay"

SUCCESS_BODY = b'{"result_code":"OK","result_msg":"SUCCESS"}'
FAIL_BODY = b'{"result_code":"OK","result_msg":"FAIL"}'
DIALECT = Dialect(SUCCESS_BODY, FAIL_BODY, "application/json")
PAYOUT_CHANNEL = "gopay_payout"  # a disbursement (代付): never moves a payment order

_UTF8_CHARSETS = frozenset({"utf-8", "utf8"})
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
_MILLISECOND = Decimal("0.001")


class GoPayGateway:
    """The GoPay notification adapter (see PROTOCOL.md, GoPay)."""

    provider = PROVIDER
    dialect = DIALECT
    signature_headers: tuple[str, ...] = SIGNATURE_HEADERS

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
                load_key_file(
                    path, source=source, key=f"gopay.merchants[{i}].platform_public_keys[{j}]"
                )
                for j, path in enumerate(m.platform_public_keys)
            )
            for i, m in enumerate(cfg.merchants)
        }
        return cls(
            merchants=merchants,
            timestamp_tolerance_s=cfg.timestamp_tolerance_s,
            allowed_ips=cfg.allowed_ips,
        )

    def parse(self, inbound: Inbound, *, fresh: bool = True) -> Notification:
        """Verify and parse one notification; raise `Rejected` with the outcome otherwise.

        `fresh=False` (a replay of stored bytes) skips the timestamp window and the nonce.
        """
        check_content_type(inbound)
        envelope = read_envelope(inbound.body)
        charge = envelope.charge
        try:
            return self._verified(inbound, envelope, fresh=fresh)
        except Rejected as exc:
            # Best effort, even unverified: the rejection is recorded against these ids.
            if exc.merchant_id is None:
                exc.merchant_id = self._merchant_hint(charge)
            if exc.out_trade_no is None:
                exc.out_trade_no = _hint(charge.get("out_trade_no"))
            raise

    def _verified(self, inbound: Inbound, envelope: Envelope, *, fresh: bool) -> Notification:
        headers = SignatureHeaders.from_mapping(inbound.headers)
        mchid = self._merchant_id(envelope.charge)
        keys = self.merchants[mchid]
        variant = verify_signature(keys, headers=headers, charge=envelope.charge_bytes)
        if variant is None:
            raise Rejected(
                Outcome.BAD_SIGNATURE,
                "signature does not verify with any of the merchant's platform keys",
                merchant_id=mchid,
            )
        fresh_checked = fresh and self.timestamp_tolerance_s > 0
        if fresh_checked:
            self._check_fresh(headers.timestamp)
        check_result_code(envelope.result_code, envelope.result_msg)
        return build_notification(
            envelope.charge,
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

    def trace(self, inbound: Inbound, *, now: float) -> dict[str, Any]:
        """Every check `parse` makes on the signature, with its numbers, for `receiver explain`:
        the merchant ids, the signed text's SHA-256, each key (by fingerprint) with each variant
        and its result, the timestamp against `now`. Pure and never raises: a step that cannot
        be taken says why under "problem"."""
        found: dict[str, Any] = {"merchants_configured": sorted(self.merchants)}
        try:
            envelope = read_envelope(inbound.body)
            claimed = claimed_merchant(envelope.charge)
            headers = SignatureHeaders.from_mapping(inbound.headers)
        except Rejected as exc:
            return found | {"problem": exc.reason}
        plain = signed_text(
            nonce=headers.nonce, timestamp=headers.timestamp, charge=envelope.charge_bytes
        )
        found |= {
            "merchant_claimed": None if claimed is None else claimed[:_HINT_MAX],
            "merchant_configured": self._merchant_hint(envelope.charge) in self.merchants,
            "signed_text_sha256": hashlib.sha256(plain).hexdigest(),
            "timestamp": self._trace_timestamp(headers.timestamp, now=now),
        }
        try:
            found["keys_tried"] = [
                {"merchant": mchid, "key": t.key, "variant": t.variant, "verified": t.verified}
                for mchid, keys in self._keys_to_try(envelope.charge).items()
                for t in trace_signature(keys, headers=headers, charge=envelope.charge_bytes)
            ]
        except Rejected as exc:  # a signature that is not canonical base64
            found["problem"] = exc.reason
        return found

    def _keys_to_try(self, charge: Mapping[str, Any]) -> dict[str, tuple[RSAPublicKey, ...]]:
        """The merchant's keys; every merchant's when it is not one configured (which key
        verifies, if any, says which merchant id the sender should have named)."""
        mchid = self._merchant_hint(charge)
        if mchid in self.merchants:
            return {mchid: self.merchants[mchid]}
        return self.merchants

    def _trace_timestamp(self, timestamp: str, *, now: float) -> dict[str, Any]:
        tolerance = self.timestamp_tolerance_s
        found: dict[str, Any] = {"sent": timestamp, "tolerance_s": tolerance}
        try:
            skew = timestamp_skew(timestamp, now=now)
        except ValueError:
            return found | {"problem": "x-ca-timestamp is not an epoch in ms, us or ns"}
        return found | {
            "skew_s": float(skew.quantize(_MILLISECOND)),
            "checked": tolerance > 0,
            "within": within_tolerance(skew, tolerance),
        }

    def _check_fresh(self, timestamp: str) -> None:
        try:
            skew = timestamp_skew(timestamp, now=self.clock())
        except ValueError:
            raise _malformed("x-ca-timestamp is not an epoch in ms, us or ns") from None
        if not within_tolerance(skew, self.timestamp_tolerance_s):
            raise Rejected(Outcome.EXPIRED, expired_reason(skew, self.timestamp_tolerance_s))


# --- content type ---------------------------------------------------------------------------


def check_content_type(inbound: Inbound) -> None:
    """Only JSON in UTF-8 is accepted (415 otherwise)."""
    mime = inbound.content_type.split(";", 1)[0].strip().lower()
    if mime != "application/json":
        raise Rejected(
            Outcome.MALFORMED,
            "content type must be application/json",
            media_type=True,
        )
    if inbound.charset is not None and inbound.charset.strip().lower() not in _UTF8_CHARSETS:
        raise Rejected(Outcome.MALFORMED, "charset must be UTF-8", media_type=True)


def check_result_code(code: object, message: object) -> None:
    """The protocol fields before the business fields: only `result_code` OK with `result_msg`
    SUCCESS carries a charge (a notification and an order-query reply alike)."""
    if code != "OK":
        raise _malformed("result_code is not OK")
    if message != "SUCCESS":
        raise _malformed("result_msg is not SUCCESS")


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
    stated = "pay_amount" in charge
    paid = amount_field(charge, "pay_amount") if stated else amount
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
        payout=text_field(charge, "channel") == PAYOUT_CHANNEL,
        detail=detail,
        paid_amount_stated=stated,
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
    # Integer arithmetic on the matched digits: at most 3 decimals, of which the third must be 0.
    whole, _, decimals = text.partition(".")
    if decimals[2:] not in ("", "0"):
        raise ValueError("not a whole number of minor units")
    return int(whole) * 100 + int(decimals[:2].ljust(2, "0"))


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
