"""GoPay: notifications pushed by the platform, and (reconciliation) order queries we send it.

Both directions share `signing` (RSA-SHA1 over nonce, timestamp and raw bytes) and `jsonspan`
(the raw `charge` bytes a signature covers).
"""

from receiver.gateways.gopay.jsonspan import find_charge_span, read_charge
from receiver.gateways.gopay.notify import (
    FAIL_BODY,
    PROVIDER,
    SUCCESS_BODY,
    GoPayGateway,
    build_notification,
    parse_amount_minor,
)
from receiver.gateways.gopay.signing import (
    SignatureHeaders,
    denied_keys,
    load_public_key,
    parse_timestamp,
    spki_der,
    verify_signature,
)

__all__ = [
    "FAIL_BODY",
    "PROVIDER",
    "SUCCESS_BODY",
    "GoPayGateway",
    "SignatureHeaders",
    "build_notification",
    "denied_keys",
    "find_charge_span",
    "load_public_key",
    "parse_amount_minor",
    "parse_timestamp",
    "read_charge",
    "spki_der",
    "verify_signature",
]
