"""Every gateway adapter, built from the configuration (apart from the HTTP application, so that
a `serve --workers N` supervisor can vet the gateways' keys without importing the application)."""

from __future__ import annotations

from receiver.config import Config
from receiver.gateways import Gateway
from receiver.gateways.baofoo import BaofooGateway
from receiver.gateways.gopay import GoPayGateway


def build_gateways(config: Config) -> dict[str, Gateway]:
    """Every gateway adapter, keyed by the provider name in its URL; raises ConfigError."""
    gateways: list[Gateway] = [
        GoPayGateway.from_config(config.gopay, source=config.source),
        BaofooGateway.from_config(config.baofoo),
    ]
    return {g.provider: g for g in gateways}
