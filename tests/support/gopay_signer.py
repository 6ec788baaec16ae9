"""Sign GoPay notifications exactly as the PHP platform does, with a test key."""

from receiver.simulate import (
    GoPaySimulator as GoPaySigner,
)
from receiver.simulate import (
    new_nonce,
    new_rsa_key,
    now_ms,
    php_json_encode,
    public_key_text,
)

__all__ = [
    "GoPaySigner",
    "new_nonce",
    "new_rsa_key",
    "now_ms",
    "php_json_encode",
    "public_key_text",
]
