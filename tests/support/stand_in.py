"""The stand-in gateway (`receiver simulate`) on a real socket, for the reconciler's end-to-end
tests: it holds payments and answers both gateways' order queries, signed as they sign."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from receiver.core.notification import Status
from receiver.simulate.gateway import GoPayClient, StandInGateway
from receiver.simulate.payments import Payment
from receiver.simulate.server import create_gateway_app
from tests.conftest import BAOFOO_MEMBER, BAOFOO_TERMINAL, GOPAY_MCHID
from tests.support.gopay_signer import GoPaySigner, new_rsa_key

API_KEY = "stand-in-api-key"
ServerFactory = Callable[..., Any]


@functools.cache
def merchant_key() -> RSAPrivateKey:
    """The GoPay merchant's private key (signs order queries), one per test session."""
    return new_rsa_key()


def merchant_key_file(folder: Path) -> Path:
    """The merchant key as the configuration names it: a PKCS#8 PEM file."""
    path = folder / "gopay-merchant.pem"
    path.write_bytes(
        merchant_key().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


@dataclass
class StandIn:
    """The stand-in gateway and where it listens."""

    gateway: StandInGateway
    base_url: str

    def pay(self, provider: str, out_trade_no: str, *, status: Status = Status.PAID) -> None:
        """The customer paid (or not): order queries now answer so."""
        gopay = provider == "gopay"
        self.gateway.hold(
            Payment(
                provider=provider,
                merchant_id=GOPAY_MCHID if gopay else BAOFOO_MEMBER,
                out_trade_no=out_trade_no,
                amount_minor=10000,
                status=status,
                terminal_id="" if gopay else BAOFOO_TERMINAL,
            )
        )


async def start_stand_in(
    aiohttp_server: ServerFactory, *, platform_key: RSAPrivateKey, md5_key: str
) -> StandIn:
    """The stand-in on a free port, knowing the test merchants of both gateways."""
    gateway = StandInGateway(
        platform=GoPaySigner(platform_key),
        gopay_clients={GOPAY_MCHID: GoPayClient(merchant_key().public_key(), API_KEY)},
        baofoo_keys={(BAOFOO_MEMBER, BAOFOO_TERMINAL): md5_key},
    )
    server: TestServer = await aiohttp_server(create_gateway_app(gateway))
    return StandIn(gateway, str(server.make_url("")).rstrip("/"))
