"""Baofoo's keyed MD5 signatures, both directions: notifications, order queries and their replies.

Pure functions on text; lower-case hex digests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

SIGNED_FIELDS = (
    "MemberID",
    "TerminalID",
    "TransID",
    "Result",
    "ResultDesc",
    "FactMoney",
    "AdditionalInfo",
    "SuccTime",
)
SIGNATURE_FIELD = "Md5Sign"


def baofoo_signature(fields: Mapping[str, str], md5_key: str, *, encoding: str = "utf-8") -> str:
    """Lower-case hex MD5 of a notification's signed text; a missing field counts as empty."""
    return _md5_hex(f"{signed_fields(fields)}~|~{SIGNATURE_FIELD}={md5_key}".encode(encoding))


def signed_fields(fields: Mapping[str, str]) -> str:
    """The signed text up to the key: `MemberID=...~|~...~|~SuccTime=...`."""
    return "~|~".join(f"{name}={fields.get(name, '')}" for name in SIGNED_FIELDS)


def md5_key_fingerprint(md5_key: str) -> str:
    """An MD5 key's short name: the first 8 hex digits of its SHA-256 (too few to test guesses
    of the key against, enough to tell two keys apart)."""
    return "sha256:" + hashlib.sha256(md5_key.encode("utf-8")).hexdigest()[:8]


def query_request_signature(
    *, member_id: str, terminal_id: str, trans_id: str, md5_key: str
) -> str:
    """Lower-case hex MD5 of an order query: MemberID|TerminalID|TransID|md5_key."""
    return _md5_hex("|".join([member_id, terminal_id, trans_id, md5_key]).encode("utf-8"))


def query_reply_signature(parts: Sequence[str], md5_key: str) -> str:
    """Lower-case hex MD5 of an order-query reply: MemberID|...|SuccTime|md5_key."""
    if len(parts) != 6:
        raise ValueError("an order-query reply has six signed parts")
    return _md5_hex("|".join([*parts, md5_key]).encode("utf-8"))


def _md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()  # noqa: S324 - the protocol mandates MD5
