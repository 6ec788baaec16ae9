"""Baofoo 4.0 notifications: a urlencoded form in its charset, keyed MD5 signature; reply `OK`.

Pure: bytes in, a `Notification` or `Rejected` out; no I/O. The order of work follows
"verify before you trust": form -> required fields -> merchant -> signature -> business fields.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import unquote_to_bytes

from receiver.config import BaofooConfig, BaofooMerchant
from receiver.core.addresses import Network
from receiver.core.notification import Inbound, Notification, Outcome, Status, is_identifier
from receiver.errors import Rejected
from receiver.gateways import Dialect
from receiver.gateways.baofoo.signing import (
    SIGNATURE_FIELD,
    SIGNED_FIELDS,
    baofoo_signature,
    md5_key_fingerprint,
    signed_fields,
)

PROVIDER = "baofoo"
FORM_TYPE = "application/x-www-form-urlencoded"
CURRENCY = "CNY"
CHINA_TIME = timezone(timedelta(hours=8), "UTC+08:00")
# `OK` stops Baofoo resending; the refusal body must never start with OK.
DIALECT = Dialect(success_body=b"OK", fail_body=b"FAIL", content_type="text/plain")

# What every notification carries. An absent field signs as the empty string: a failure may leave
# out FactMoney and SuccTime (nothing was paid), a paid notification needs both.
REQUIRED_FIELDS = frozenset(
    {"MemberID", "TerminalID", "TransID", "Result", "ResultDesc", SIGNATURE_FIELD}
)
_KNOWN_FIELDS = frozenset(SIGNED_FIELDS) | {SIGNATURE_FIELD}

# Prepaid cards (seed 4.3.1, PayID 101-116) may pay less than the order: a card's face value
# need not match what the customer ordered.
PREPAID_CARD_PAY_IDS = frozenset(str(pay_id) for pay_id in range(101, 117))

# gb2312 is read as GBK, as browsers do (WHATWG): GBK is a superset, senders label GBK bodies
# gb2312, and GBK re-encodes every GB2312 character to the same bytes, so signatures still hold.
_CHARSETS = {
    "utf-8": "utf-8",
    "utf8": "utf-8",
    "gbk": "gbk",
    "x-gbk": "gbk",
    "cp936": "gbk",
    "gb2312": "gbk",
    "gb-2312": "gbk",
    "csgb2312": "gbk",
    "gb18030": "gb18030",
    "gb-18030": "gb18030",
}

# Seed section 4.2: ResultDesc codes of a failed payment.
RESULT_DESCRIPTIONS = {
    "0000": "支付失败 payment failed",
    "0001": "系统错误 system error",
    "0002": "订单超时 order timed out",
    "0011": "系统维护 system maintenance",
    "0012": "无效商户 invalid merchant",
    "0013": "余额不足 insufficient balance",
    "0014": "超过支付限额 payment limit exceeded",
    "0015": "卡号和卡密错误 wrong card number or card password",
    "0016": "不合法的 IP 地址 IP address not allowed",
    "0017": "重复订单金额不符 repeated order with a different amount",
    "0018": "卡密已被使用 card password already used",
    "0019": "订单金额错误 wrong order amount",
    "0020": "支付的类型错误 wrong payment type",
    "0021": "卡类型有误 wrong card type",
    "0022": "卡信息不完整 incomplete card information",
    "0023": "卡号、卡密、金额不正确 wrong card number, password or amount",
    "0024": "不能用此卡继续做交易 this card cannot be used further",
    "0025": "订单无效 invalid order",
}

_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{32}", re.ASCII)
_FEN = re.compile(r"[0-9]{1,15}", re.ASCII)
_SUCC_TIME = re.compile(r"[0-9]{14}", re.ASCII)
_FAILURE_CODE = re.compile(r"[0-9A-Za-z]{0,16}", re.ASCII)
_MAX_ID_LENGTH = 64


class BaofooGateway:
    """The Baofoo 4.0 adapter: verify form notifications, answer `OK` or `FAIL`."""

    provider = PROVIDER
    dialect = DIALECT
    signature_headers: tuple[str, ...] = ()  # the signature is a form field

    def __init__(
        self, merchants: Iterable[BaofooMerchant], *, allowed_ips: Sequence[Network] = ()
    ) -> None:
        self.allowed_ips: tuple[Network, ...] = tuple(allowed_ips)
        self._keys = {(m.member_id, m.terminal_id): m.md5_key for m in merchants}

    @classmethod
    def from_config(cls, cfg: BaofooConfig) -> BaofooGateway:
        """The adapter for the `[baofoo]` configuration section."""
        return cls(cfg.merchants, allowed_ips=cfg.allowed_ips)

    def __repr__(self) -> str:
        # Merchant pairs only: the MD5 keys must never reach a log line.
        return f"BaofooGateway(merchants={sorted(self._keys)!r})"

    def parse(self, inbound: Inbound, *, fresh: bool = True) -> Notification:
        """Verify and parse one notification; raise `Rejected` with the outcome otherwise.

        Baofoo signs no timestamp or nonce, so `fresh` (False for a replay) changes nothing.
        """
        charset = _request_charset(inbound)
        fields = parse_form(inbound.body, encoding=charset)
        _require_fields(fields)
        md5_key = self._md5_key(fields)
        verified_with = _verify(fields, md5_key, charset=charset)
        return _notification(fields, charset=charset, verified_with=verified_with)

    def trace(self, inbound: Inbound) -> dict[str, Any]:
        """Every check `parse` makes on the signature, for `receiver explain`: the merchant
        pairs, the signed text's SHA-256 (up to the key) in each encoding tried, each key (by
        fingerprint) with each encoding and its result. Pure and never raises: a step that
        cannot be taken says why under "problem"."""
        pairs = self._keys
        found: dict[str, Any] = {"merchants_configured": sorted(f"{m}/{t}" for m, t in pairs)}
        try:
            charset = _request_charset(inbound)
            fields = parse_form(inbound.body, encoding=charset)
            _require_fields(fields)
        except Rejected as exc:
            return found | {"problem": exc.reason}
        pair = (fields["MemberID"], fields["TerminalID"])
        encodings = _encodings(charset)
        found |= {
            "merchant_claimed": "/".join(p[:_MAX_ID_LENGTH] for p in pair),
            "merchant_configured": pair in pairs,
            "signed_text_sha256": {e: _text_sha256(fields, encoding=e) for e in encodings},
        }
        given = fields[SIGNATURE_FIELD]
        if _HEX_DIGEST.fullmatch(given) is None:
            return found | {"problem": "Md5Sign is not 32 hex digits"}
        # The pair's key; every key when the pair is not configured (one that matches says
        # which pair the sender should have named).
        tried = {pair: pairs[pair]} if pair in pairs else pairs
        found["keys_tried"] = [
            {
                "merchant": f"{member}/{terminal}",
                "key": md5_key_fingerprint(md5_key),
                "variant": encoding,
                "verified": _signature_matches(fields, md5_key, encoding=encoding, given=given),
            }
            for (member, terminal), md5_key in tried.items()
            for encoding in encodings
        ]
        return found

    def _md5_key(self, fields: Mapping[str, str]) -> str:
        key = self._keys.get((fields["MemberID"], fields["TerminalID"]))
        if key is None:
            raise _rejected(Outcome.UNKNOWN_MERCHANT, "MemberID/TerminalID not configured", fields)
        return key


def _request_charset(inbound: Inbound) -> str:
    """The Python codec for the request, or 415 for another content type or charset."""
    media_type = inbound.content_type.split(";", 1)[0].strip().lower()
    if media_type != FORM_TYPE:
        raise Rejected(
            Outcome.MALFORMED,
            f"content type must be {FORM_TYPE}",
            media_type=True,
        )
    label = (inbound.charset or "utf-8").strip().strip('"').lower().replace("_", "-")
    codec = _CHARSETS.get(label)
    if codec is None:
        raise Rejected(
            Outcome.MALFORMED,
            "charset must be UTF-8, GBK or GB18030",
            media_type=True,
        )
    return codec


def parse_form(body: bytes, *, encoding: str) -> dict[str, str]:
    """The notification's fields from an urlencoded body; unknown names are dropped."""
    fields: dict[str, str] = {}
    for piece in body.split(b"&"):
        if not piece:
            continue
        raw_name, _, raw_value = piece.partition(b"=")
        name = _form_decode(raw_name, encoding=encoding)
        if name not in _KNOWN_FIELDS:
            continue
        if name in fields:
            # Which of two values was signed is anyone's guess: refuse rather than pick one.
            raise _rejected(Outcome.MALFORMED, f"field {name} given twice", fields)
        fields[name] = _form_decode(raw_value, encoding=encoding)
    return fields


def _form_decode(raw: bytes, *, encoding: str) -> str:
    """One name or value: `+` is a space, then percent-decoding, then the charset."""
    try:
        return unquote_to_bytes(raw.replace(b"+", b" ")).decode(encoding)
    except UnicodeDecodeError:
        raise Rejected(Outcome.MALFORMED, f"form is not valid {encoding}") from None


def _require_fields(fields: Mapping[str, str]) -> None:
    missing = sorted(REQUIRED_FIELDS - fields.keys())
    if missing:
        raise _rejected(Outcome.MALFORMED, f"missing field(s): {', '.join(missing)}", fields)


def _verify(fields: Mapping[str, str], md5_key: str, *, charset: str) -> str:
    """The encoding under which Md5Sign matches; BAD_SIGNATURE when none does."""
    given = fields[SIGNATURE_FIELD]
    if _HEX_DIGEST.fullmatch(given) is None:
        raise _rejected(Outcome.BAD_SIGNATURE, "Md5Sign is not 32 hex digits", fields)
    for encoding in _encodings(charset):
        if _signature_matches(fields, md5_key, encoding=encoding, given=given):
            return encoding
    raise _rejected(Outcome.BAD_SIGNATURE, "Md5Sign does not match", fields)


def _encodings(charset: str) -> tuple[str, ...]:
    """The encodings a signature may have been made in, in the order they are tried."""
    # Some senders sign the UTF-8 text yet post the form in GBK, so UTF-8 is always a candidate.
    return (charset,) if charset == "utf-8" else (charset, "utf-8")


def _text_sha256(fields: Mapping[str, str], *, encoding: str) -> str | None:
    """SHA-256 of the signed text up to the key in `encoding`; None when it has no such form."""
    try:
        return hashlib.sha256(signed_fields(fields).encode(encoding)).hexdigest()
    except UnicodeEncodeError:
        return None


def _signature_matches(
    fields: Mapping[str, str], md5_key: str, *, encoding: str, given: str
) -> bool:
    try:
        expected = baofoo_signature(fields, md5_key, encoding=encoding)
    except UnicodeEncodeError:
        return False  # the text cannot have been signed in this encoding
    return hmac.compare_digest(expected.encode("ascii"), given.lower().encode("ascii"))


def _notification(fields: Mapping[str, str], *, charset: str, verified_with: str) -> Notification:
    """The verified fields in gateway-neutral terms."""
    target, detail = _target(fields)
    if verified_with != charset:
        detail.append(f"signature verified over UTF-8 text (form posted as {charset})")
    return build_notification(fields, target=target, detail="; ".join(detail))


def build_notification(
    fields: Mapping[str, str], *, target: Status | None, detail: str
) -> Notification:
    """Verified MemberID, TransID, FactMoney (fen) and SuccTime as a neutral notification."""
    if not is_identifier(fields["TransID"]):
        raise _rejected(Outcome.MALFORMED, "TransID is empty, too long or not printable", fields)
    return Notification(
        provider=PROVIDER,
        merchant_id=fields["MemberID"],
        out_trade_no=fields["TransID"],
        target=target,
        paid_amount_minor=_fen(fields, target=target),
        order_amount_minor=None,
        currency=CURRENCY,
        paid_at=_paid_at(fields, target=target),
        underpay_channels=PREPAID_CARD_PAY_IDS,
        detail=detail,
    )


def _target(fields: Mapping[str, str]) -> tuple[Status, list[str]]:
    """The status Result and ResultDesc ask for, with the failure code explained."""
    result, code = fields["Result"], fields["ResultDesc"]
    if result == "1" and code == "01":
        return Status.PAID, []
    # A failure that calls itself a success contradicts itself: let a person look at it.
    if result == "0" and code != "01" and _FAILURE_CODE.fullmatch(code) is not None:
        meaning = RESULT_DESCRIPTIONS.get(code, "unknown code")
        return Status.FAILED, [f"ResultDesc={code} ({meaning})"]
    raise _rejected(Outcome.MALFORMED, "Result/ResultDesc combination not understood", fields)


def _fen(fields: Mapping[str, str], *, target: Status | None) -> int | None:
    """FactMoney as integer fen: digits only, no sign, no decimal point; a failure may omit it."""
    text = fields.get("FactMoney", "")
    if not text and target is not Status.PAID:
        return None
    if _FEN.fullmatch(text) is None:
        raise _rejected(Outcome.MALFORMED, "FactMoney must be integer fen", fields)
    return int(text)


def _paid_at(fields: Mapping[str, str], *, target: Status | None) -> datetime | None:
    """SuccTime (China time) in UTC; a failed payment may lack a usable one."""
    paid_at = parse_succ_time(fields.get("SuccTime", ""))
    if paid_at is None and target is Status.PAID:
        raise _rejected(Outcome.MALFORMED, "SuccTime must be YYYYMMDDhhmmss", fields)
    return paid_at


def parse_succ_time(text: str) -> datetime | None:
    """`YYYYMMDDhhmmss` in China time as an aware UTC datetime; None when it is not one."""
    if _SUCC_TIME.fullmatch(text) is None:
        return None
    # Fixed slices rather than strptime, whose variable-width fields accept odd splits.
    month, day, hour, minute, second = (int(text[i : i + 2]) for i in range(4, 14, 2))
    try:
        local = datetime(int(text[:4]), month, day, hour, minute, second, tzinfo=CHINA_TIME)
        return local.astimezone(UTC)
    except (ValueError, OverflowError):  # no such date, or year 1 falling off the calendar
        return None


def _rejected(outcome: Outcome, reason: str, fields: Mapping[str, str]) -> Rejected:
    """A refusal that keeps whatever identifies the order, so the rejection can be recorded."""
    return Rejected(
        outcome,
        reason,
        merchant_id=_recordable(fields.get("MemberID")),
        out_trade_no=_recordable(fields.get("TransID")),
    )


def _recordable(value: str | None) -> str | None:
    """An unverified identifier, if it is short and printable enough to store and log."""
    if value and len(value) <= _MAX_ID_LENGTH and value.isprintable():
        return value
    return None
