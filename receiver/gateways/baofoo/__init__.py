"""Baofoo 4.0: form notifications pushed to us, and (reconciliation) order queries we send.

Both directions share `signing` (the keyed MD5 digests).
"""

from receiver.gateways.baofoo.notify import (
    PREPAID_CARD_PAY_IDS,
    PROVIDER,
    BaofooGateway,
    parse_form,
    parse_succ_time,
)
from receiver.gateways.baofoo.signing import (
    SIGNATURE_FIELD,
    SIGNED_FIELDS,
    baofoo_signature,
    query_reply_signature,
)

__all__ = [
    "PREPAID_CARD_PAY_IDS",
    "PROVIDER",
    "SIGNATURE_FIELD",
    "SIGNED_FIELDS",
    "BaofooGateway",
    "baofoo_signature",
    "parse_form",
    "parse_succ_time",
    "query_reply_signature",
]
