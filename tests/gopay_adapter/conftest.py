"""Fixtures of the GoPay adapter's unit tests: a key, another key, a signer and a gateway."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from receiver.gateways.gopay import (
    GoPayGateway,
)
from tests.support.gopay_adapter import MCHID, make_gateway
from tests.support.gopay_signer import GoPaySigner, new_rsa_key


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return new_rsa_key()


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return new_rsa_key()


@pytest.fixture(scope="module")
def signer(key: rsa.RSAPrivateKey) -> GoPaySigner:
    return GoPaySigner(key)


@pytest.fixture(scope="module")
def gateway(key: rsa.RSAPrivateKey) -> GoPayGateway:
    return make_gateway({MCHID: [key]})
