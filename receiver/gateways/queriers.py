"""The configured order queriers (the asking side of each gateway), for the reconciler."""

from __future__ import annotations

from receiver.config import Config
from receiver.gateways import OrderQuerier
from receiver.gateways.baofoo.query import BaofooQuerier
from receiver.gateways.gopay.query import GoPayQuerier


def build_queriers(config: Config) -> dict[str, OrderQuerier]:
    """One querier per provider whose query URL is set; key files are read and vetted here."""
    queriers: dict[str, OrderQuerier] = {}
    if config.gopay.api_url:
        queriers[GoPayQuerier.provider] = GoPayQuerier.from_config(
            config.gopay, source=config.source
        )
    if config.baofoo.query_url:
        queriers[BaofooQuerier.provider] = BaofooQuerier.from_config(config.baofoo)
    return queriers
