"""Standard Webhooks signing: what a destination's verifier checks.

`webhook-signature: v1,<base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}">`, the
key being the base64 after the secret's `whsec_` prefix (https://www.standardwebhooks.com).
"""

from __future__ import annotations

import base64
import hashlib
import hmac

PREFIX = "whsec_"


def secret_key(secret: str) -> bytes:
    """The HMAC key a `whsec_...` secret carries; ValueError for anything else."""
    if not secret.startswith(PREFIX):
        raise ValueError('a webhook secret starts with "whsec_"')
    return base64.b64decode(secret.removeprefix(PREFIX), validate=True)


def signature(key: bytes, *, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256>` over `msg_id.timestamp.body`."""
    signed = b"%s.%d.%s" % (msg_id.encode(), timestamp, body)
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signed_headers(key: bytes, *, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers of a Standard Webhooks request."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(key, msg_id=msg_id, timestamp=timestamp, body=body),
    }


def verify(key: bytes, *, headers: dict[str, str], body: bytes) -> bool:
    """True when one of the `v1` signatures in `headers` is the one over `body` (constant time)."""
    try:
        timestamp = int(headers["webhook-timestamp"])
        expected = signature(key, msg_id=headers["webhook-id"], timestamp=timestamp, body=body)
    except (KeyError, ValueError):
        return False
    given = headers.get("webhook-signature", "").split()
    return any(hmac.compare_digest(expected.encode(), s.encode()) for s in given)
