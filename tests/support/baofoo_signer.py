"""Sign Baofoo notifications exactly as the gateway does, with a test key."""

from __future__ import annotations

from urllib.parse import urlencode

from receiver.gateways.baofoo import baofoo_signature

TEST_MD5_KEY = "abcdefg"  # the seed's published test key
MEMBER_ID = "100000178"
TERMINAL_ID = "10000001"


def baofoo_fields(**overrides: str) -> dict[str, str]:
    """A valid paid notification's fields, without Md5Sign; keywords replace fields."""
    fields = {
        "MemberID": MEMBER_ID,
        "TerminalID": TERMINAL_ID,
        "TransID": "20140101120000001",
        "Result": "1",
        "ResultDesc": "01",
        "FactMoney": "100",
        "AdditionalInfo": "",
        "SuccTime": "20140101120130",
    }
    fields.update(overrides)
    return fields


def sign_baofoo(
    fields: dict[str, str], md5_key: str = TEST_MD5_KEY, *, encoding: str = "utf-8"
) -> dict[str, str]:
    """The fields with Md5Sign added, computed over the text encoded in `encoding`."""
    return {**fields, "Md5Sign": baofoo_signature(fields, md5_key, encoding=encoding)}


def encode_form(fields: dict[str, str], *, charset: str = "utf-8") -> bytes:
    """An application/x-www-form-urlencoded body in `charset`."""
    return urlencode(fields, encoding=charset).encode("ascii")
