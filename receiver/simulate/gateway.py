"""The stand-in gateway's mind: the payments it holds, its answers to order queries (both
gateways), and the notifications it sends for them. No HTTP server here: see `server.py`.
"""

from __future__ import annotations

import enum
import hmac
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import aiohttp
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from receiver.errors import Rejected
from receiver.gateways.baofoo.signing import query_reply_signature, query_request_signature
from receiver.gateways.gopay.signing import (
    AUTH_HEADER,
    SignatureHeaders,
    verify_request,
)
from receiver.simulate.payments import (
    Payment,
    baofoo_notification_fields,
    baofoo_reply_parts,
    china_time,
    gopay_charge,
    gopay_query_charge,
)
from receiver.simulate.sender import (
    BAOFOO_RETRY_S,
    GOPAY_RETRY_S,
    Attempt,
    Delivery,
    Request,
    baofoo_acknowledges,
    deliver,
    gopay_acknowledges,
)
from receiver.simulate.signers import BaofooSimulator, GoPaySimulator, php_json_encode

Event = Mapping[str, Any]
JSON_TYPE = "application/json; charset=UTF-8"


class Fault(enum.StrEnum):
    """A way the stand-in gateway misbehaves on order queries, for trying the unhappy paths."""

    NONE = "none"  #: answer properly
    ERROR = "error"  #: GoPay error_code 999999, Baofoo HTTP 500
    GARBAGE = "garbage"  #: an HTML page instead of an answer
    OVERSIZED = "oversized"  #: an answer of a mebibyte
    HANG = "hang"  #: never answer (until the gateway stops)
    FORGED = "forged"  #: a well-formed answer signed with the wrong key


@dataclass(frozen=True, slots=True)
class GoPayClient:
    """What the platform knows of a merchant: the key its queries verify with, its API key."""

    public_key: RSAPublicKey = field(repr=False)
    api_key: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer of the stand-in gateway."""

    status: int
    body: bytes
    headers: Mapping[str, str]


class GoPayRefusal(Exception):
    """The platform's error reply: `{"error_msg": ..., "error_code": ...}` with an HTTP status."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def answer(self) -> Answer:
        """The error reply as the platform writes it."""
        body = php_json_encode({"error_msg": self.message, "error_code": self.code})
        return Answer(self.status, body, {"Content-Type": JSON_TYPE})


def _bad_header(name: str) -> GoPayRefusal:
    return GoPayRefusal(400, 400000, f"Invalid Request.[Request header [{name}] Failure.]")


_BAD_PARAMETERS = GoPayRefusal(400, 100000, "invalid parameters")
_BAD_AUTH = GoPayRefusal(400, 400003, "Invalid Request.[Auth Key No permission or nexistencet.]")
_BAD_SIGN = GoPayRefusal(403, 400003, "Invalid Request.[Request Data And Sign Verify Failure.]")
_NO_ORDER = GoPayRefusal(400, 200000, "Order does not exist.")
_SYSTEM_ERROR = GoPayRefusal(400, 999999, "Error .[There may be a problem with the system.]")


class StandInGateway:
    """Both gateways at once: holds payments, answers order queries, sends notifications."""

    def __init__(
        self,
        *,
        platform: GoPaySimulator,
        gopay_clients: Mapping[str, GoPayClient] | None = None,
        baofoo_keys: Mapping[tuple[str, str], str] | None = None,
        on_event: Callable[[Event], None] = lambda event: None,
    ) -> None:
        self.platform = platform
        self.gopay_clients = dict(gopay_clients or {})
        self.baofoo_keys = dict(baofoo_keys or {})  # (MemberID, TerminalID) -> MD5 key
        self.payments: dict[tuple[str, str, str], Payment] = {}
        self.fault = Fault.NONE
        self.on_event = on_event

    def __repr__(self) -> str:
        return f"StandInGateway(payments={len(self.payments)}, fault={self.fault.value!r})"

    def hold(self, payment: Payment) -> None:
        """Keep (or replace) a payment: order queries answer from it."""
        self.payments[payment.key] = payment
        self.on_event({"event": "payment_held", **payment.as_json()})

    # --- order queries ------------------------------------------------------------------------

    def gopay_query(
        self, *, path: str, query: str, headers: Mapping[str, str], body: bytes
    ) -> Answer:
        """Answer `POST /pay/orderquery` as the platform does (error_code or signed charge)."""
        try:
            mchid, out_trade_no = self._gopay_request(
                path=path, query=query, headers=headers, body=body
            )
            payment = self.payments.get(("gopay", mchid, out_trade_no))
            if payment is None:
                raise _NO_ORDER
        except GoPayRefusal as refusal:
            self._queried("gopay", out_trade_no=None, answer=f"error_code {refusal.code}")
            return refusal.answer()
        self._queried("gopay", out_trade_no=out_trade_no, answer=payment.status.value)
        return self._gopay_charge_answer(payment)

    def _gopay_request(
        self, *, path: str, query: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[str, str]:
        lowered = {k.lower(): v for k, v in headers.items()}
        if not lowered.get(AUTH_HEADER):
            raise _bad_header(AUTH_HEADER)
        try:
            signature = SignatureHeaders.from_mapping(lowered)
        except Rejected as exc:
            raise _bad_header(exc.reason.split(" ", 1)[0]) from None
        mchid, out_trade_no = _gopay_fields(body)
        client = self.gopay_clients.get(mchid)
        if client is None or not _same(client.api_key, lowered[AUTH_HEADER]):
            raise _BAD_AUTH
        if not _request_verifies(client, path=path, query=query, headers=signature, body=body):
            raise _BAD_SIGN
        return mchid, out_trade_no

    def _gopay_charge_answer(self, payment: Payment) -> Answer:
        charge = gopay_query_charge(payment)
        body = php_json_encode({"result_code": "OK", "result_msg": "SUCCESS", "charge": charge})
        signer = GoPaySimulator.generate() if self.fault is Fault.FORGED else self.platform
        headers = signer.headers(php_json_encode(charge))
        return Answer(200, body, headers)

    def baofoo_query(self, form: Mapping[str, str]) -> Answer:
        """Answer Baofoo's order query: the signed `|` text, `N` for an order it does not hold."""
        member, terminal, trans = (form.get(k, "") for k in ("MemberID", "TerminalID", "TransID"))
        md5_key = self.baofoo_keys.get((member, terminal))
        expected = query_request_signature(
            member_id=member, terminal_id=terminal, trans_id=trans, md5_key=md5_key or ""
        )
        if md5_key is None or not _same(expected, form.get("MD5Sign", "").lower()):
            self._queried("baofoo", out_trade_no=trans, answer="refused")
            return Answer(200, b"ERROR: unknown merchant or MD5Sign mismatch", _TEXT)
        payment = self.payments.get(("baofoo", member, trans))
        parts = _baofoo_parts(payment, member=member, terminal=terminal, trans=trans)
        self._queried("baofoo", out_trade_no=trans, answer=parts[3])
        key = "forged" if self.fault is Fault.FORGED else md5_key
        return Answer(200, "|".join([*parts, query_reply_signature(parts, key)]).encode(), _TEXT)

    def fault_answer(self, provider: str) -> Answer | None:
        """The answer the current fault gives instead of a proper one (HANG: the server's part)."""
        if self.fault is Fault.ERROR:
            if provider == "gopay":
                return _SYSTEM_ERROR.answer()
            return Answer(500, b"system error", _TEXT)
        if self.fault is Fault.GARBAGE:
            return Answer(200, b"<html><body>502 Bad Gateway</body></html>", _HTML)
        if self.fault is Fault.OVERSIZED:
            return Answer(
                200, b'{"pad":"' + b"x" * OVERSIZED_BYTES + b'"}', {"Content-Type": JSON_TYPE}
            )
        return None

    def _queried(self, provider: str, *, out_trade_no: str | None, answer: str) -> None:
        self.on_event(
            {
                "event": "order_query",
                "provider": provider,
                "out_trade_no": out_trade_no,
                "answer": answer,
            }
        )

    # --- notifications ------------------------------------------------------------------------

    def notification(self, payment: Payment) -> Callable[[], Request]:
        """Builds the signed notification afresh for each attempt (new nonce and timestamp)."""
        if payment.provider == "gopay":
            charge = gopay_charge(payment)
            return lambda: self.platform.notify(charge)
        md5_key = self.baofoo_keys[(payment.merchant_id, payment.terminal_id)]
        fields = BaofooSimulator(md5_key=md5_key).sign(baofoo_notification_fields(payment))
        form = urlencode(fields).encode("ascii")
        return lambda: (form, {"Content-Type": "application/x-www-form-urlencoded"})

    async def send(
        self,
        session: aiohttp.ClientSession,
        payment: Payment,
        *,
        notify_url: str,
        time_scale: float = 1.0,
        on_attempt: Callable[[Attempt], None] = lambda attempt: None,
    ) -> Delivery:
        """Notify `notify_url` of a final payment on the gateway's retry schedule."""
        gopay = payment.provider == "gopay"

        def report(attempt: Attempt) -> None:
            self.on_event({"event": "notification_sent", **_attempt_json(payment, attempt)})
            on_attempt(attempt)

        delivery = await deliver(
            session,
            notify_url,
            build=self.notification(payment),
            acknowledges=gopay_acknowledges if gopay else baofoo_acknowledges,
            schedule=GOPAY_RETRY_S if gopay else BAOFOO_RETRY_S,
            time_scale=time_scale,
            on_attempt=report,
        )
        self.on_event(
            {
                "event": "notification_done",
                "provider": payment.provider,
                "out_trade_no": payment.out_trade_no,
                "acknowledged": delivery.acknowledged,
                "attempts": len(delivery.attempts),
            }
        )
        return delivery


_TEXT = {"Content-Type": "text/plain; charset=UTF-8"}
_HTML = {"Content-Type": "text/html; charset=UTF-8"}
OVERSIZED_BYTES = 1024 * 1024


def _same(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8"))


def _request_verifies(
    client: GoPayClient, *, path: str, query: str, headers: SignatureHeaders, body: bytes
) -> bool:
    try:
        return verify_request(client.public_key, path=path, query=query, headers=headers, body=body)
    except Rejected:  # not base64: no signature at all
        return False


def _gopay_fields(body: bytes) -> tuple[str, str]:
    """mchid and out_trade_no of a query body; `channel` is required by the platform too."""
    try:
        fields = json.loads(body)
    except ValueError:
        raise _BAD_PARAMETERS from None
    if not isinstance(fields, dict):
        raise _BAD_PARAMETERS
    values = [fields.get(name) for name in ("mchid", "out_trade_no", "channel")]
    if not all(isinstance(v, str) and v for v in values):
        raise _BAD_PARAMETERS
    return str(values[0]), str(values[1])


def _baofoo_parts(payment: Payment | None, *, member: str, terminal: str, trans: str) -> list[str]:
    if payment is None:
        return [member, terminal, trans, "N", "0", china_time(datetime.now(UTC))]
    return baofoo_reply_parts(payment)


def _attempt_json(payment: Payment, attempt: Attempt) -> dict[str, Any]:
    return {
        "provider": payment.provider,
        "out_trade_no": payment.out_trade_no,
        "attempt": attempt.number,
        "status": attempt.status,
        "reply": attempt.reply,
        "acknowledged": attempt.acknowledged,
    }
