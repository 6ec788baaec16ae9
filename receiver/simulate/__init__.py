"""The stand-in gateway (`receiver simulate`): GoPay and Baofoo as an integrator meets them.

signers   notifications built and signed exactly as the gateways do (demo, bench, tests use them)
payments  the payments the stand-in holds, written down in each gateway's terms
sender    delivery on the gateways' retry schedules, with a time scale
gateway   the stand-in's answers to order queries, and its notifications
server    the answers over HTTP, with a control API for `receiver simulate pay`
keys      the keys it signs and verifies with, generated or read from a folder
"""

from receiver.gateways.gopay.signing import new_nonce, now_ms
from receiver.simulate.signers import (
    BaofooSimulator,
    GoPaySimulator,
    new_rsa_key,
    php_json_encode,
    public_key_text,
)

__all__ = [
    "BaofooSimulator",
    "GoPaySimulator",
    "new_nonce",
    "new_rsa_key",
    "now_ms",
    "php_json_encode",
    "public_key_text",
]
