"""The raw bytes of the top-level `charge` member, found by a position-tracking JSON scan.

GoPay signs the `charge` value exactly as it appears in the body (PHP `json_encode` bytes), so the
span is found by scanning, never by re-serialising the parsed object. Pure.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NoReturn

from receiver.core.notification import Outcome
from receiver.errors import Rejected

RESULT_CODE = "result_code"  # the protocol fields: "OK" and "SUCCESS" on every charge
RESULT_MSG = "result_msg"


@dataclass(frozen=True, slots=True)
class Envelope:
    """A body's top level: the raw charge bytes, the charge parsed from them, `result_code`."""

    charge_bytes: bytes
    charge: dict[str, Any]
    result_code: object = None  # None when absent
    result_msg: object = None


def read_envelope(body: bytes) -> Envelope:
    """The raw charge bytes, the charge parsed from exactly those bytes and the protocol field."""
    text = _json_text(body)
    (start, end), charge, protocol = _scan(text)
    charge_bytes = body[_byte_offset(text, start) : _byte_offset(text, end)]
    return Envelope(charge_bytes, charge, protocol.get(RESULT_CODE), protocol.get(RESULT_MSG))


def read_charge(body: bytes) -> tuple[bytes, dict[str, Any]]:
    """The raw charge bytes and the charge parsed from exactly those bytes, in one pass."""
    envelope = read_envelope(body)
    return envelope.charge_bytes, envelope.charge


def find_charge_span(body: bytes) -> tuple[int, int]:
    """The byte span [start, end) of the top-level `charge` object, from `{` to its `}`."""
    text = _json_text(body)
    (start, end), _, _ = _scan(text)
    return _byte_offset(text, start), _byte_offset(text, end)


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
_WS = re.compile(r"[ \t\n\r]+")
scanstring: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]


def _json_text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise malformed("body is not UTF-8") from None


def _byte_offset(text: str, index: int) -> int:
    # PHP's json_encode writes ASCII only; other senders may send raw UTF-8.
    return index if text.isascii() else len(text[:index].encode("utf-8"))


def _scan(text: str) -> tuple[tuple[int, int], dict[str, Any], dict[str, object]]:
    """The character span of the top-level `charge` object, its value and the protocol fields."""
    found: tuple[tuple[int, int], dict[str, Any]] | None = None
    protocol: dict[str, object] = {}
    try:
        for key, start, end, value in _top_level_members(text):
            if key in _PROTOCOL:
                protocol[key] = value
            elif key == "charge":
                if not isinstance(value, dict):
                    raise malformed("charge is not an object")
                found = ((start, end), value)
    except (ValueError, RecursionError):  # json.JSONDecodeError is a ValueError
        raise malformed("body is not valid JSON") from None
    if found is None:
        raise malformed("charge is missing")
    return found[0], found[1], protocol


_PROTOCOL = frozenset({RESULT_CODE, RESULT_MSG})


def _top_level_members(text: str) -> Iterator[tuple[str, int, int, Any]]:
    """(key, value start, value end, parsed value) for each member of the top-level object."""
    pos = _skip(text, 0)
    if text[pos : pos + 1] != "{":
        raise malformed("body is not a JSON object")
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
            raise malformed("expected ',' or '}'")
        pos = _skip(text, pos + 1)
    if _skip(text, pos + 1) != len(text):
        raise malformed("data after the top-level object")


def _member(text: str, pos: int, keys: set[str]) -> tuple[str, int, int, Any]:
    if text[pos : pos + 1] != '"':
        raise malformed("expected a member name")
    # Decoded, so an escaped spelling of "charge" is still found (and still counted twice).
    key, pos = scanstring(text, pos + 1)
    if key in keys:
        raise malformed(f"{'charge' if key == 'charge' else 'a member name'} appears twice")
    keys.add(key)
    pos = _skip(text, pos)
    if text[pos : pos + 1] != ":":
        raise malformed("expected ':' after a member name")
    start = _skip(text, pos + 1)
    value, end = _DECODER.raw_decode(text, start)
    return key, start, end, value


def _skip(text: str, pos: int) -> int:
    # PHP's json_encode writes no whitespace: look at one character before running the pattern,
    # which decides (a form feed or a no-break space is no JSON whitespace, and ends the skip).
    if not text[pos : pos + 1].isspace():
        return pos
    match = _WS.match(text, pos)
    return match.end() if match else pos


def malformed(reason: str) -> Rejected:
    """A MALFORMED refusal with `reason`."""
    return Rejected(Outcome.MALFORMED, reason)
