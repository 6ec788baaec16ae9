"""Every gateway adapter, built from the configuration (apart from the HTTP application, so that
a `serve --workers N` supervisor can vet the gateways' keys without importing the application),
and every fact about a gateway that the rest of the receiver needs (`GATEWAYS`): adding a gateway
means adding its package and its entry here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from receiver.config import Config
from receiver.gateways import Gateway
from receiver.gateways.baofoo import BaofooGateway
from receiver.gateways.baofoo.notify import FORM_TYPE
from receiver.gateways.gopay import GoPayGateway


@dataclass(frozen=True, slots=True)
class GatewayInfo:
    """What the commands, metrics and replay know of one gateway (no secrets)."""

    provider: str  # the name in its URL, in the database's `provider` column and in the CLI
    usual_content_type: str  # what it sends, for notifications stored without a content type
    query_url_key: str  # the configuration key of its order-query URL
    verify_needs_secret: bool  # True when verifying a signature takes a secret (not a public key)
    key_setting: str  # where an operator configures the keys its signatures verify with
    merchant_ids: Callable[[Config], set[str]]  # the configured merchant ids (orders' merchant_id)
    merchant_labels: Callable[[Config], list[str]]  # the configured merchants, as shown


GATEWAYS: tuple[GatewayInfo, ...] = (
    GatewayInfo(
        provider="gopay",
        usual_content_type="application/json",
        query_url_key="gopay.api_url",
        verify_needs_secret=False,  # platform public key files
        key_setting="gopay.merchants[].platform_public_keys",
        merchant_ids=lambda config: {m.mchid for m in config.gopay.merchants},
        merchant_labels=lambda config: [m.mchid for m in config.gopay.merchants],
    ),
    GatewayInfo(
        provider="baofoo",
        usual_content_type=FORM_TYPE,
        query_url_key="baofoo.query_url",
        verify_needs_secret=True,  # the merchant's MD5 key
        key_setting="the merchant's md5_key",
        merchant_ids=lambda config: {m.member_id for m in config.baofoo.merchants},
        merchant_labels=lambda config: [
            f"{m.member_id}/{m.terminal_id}" for m in config.baofoo.merchants
        ],
    ),
)

#: Every provider name, in the order the receiver lists them.
PROVIDERS: tuple[str, ...] = tuple(g.provider for g in GATEWAYS)
BY_PROVIDER: dict[str, GatewayInfo] = {g.provider: g for g in GATEWAYS}


def build_gateways(config: Config) -> dict[str, Gateway]:
    """Every gateway adapter, keyed by the provider name in its URL; raises ConfigError."""
    gateways: list[Gateway] = [
        GoPayGateway.from_config(config.gopay, source=config.source),
        BaofooGateway.from_config(config.baofoo),
    ]
    return {g.provider: g for g in gateways}
