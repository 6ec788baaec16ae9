"""Typed application state, declared in one place."""

from __future__ import annotations

import asyncio

import asyncpg
from aiohttp import web

from receiver.config import Config
from receiver.gateways import Gateway, OrderQuerier
from receiver.http.unverified import UnverifiedLimiter
from receiver.store.database import Health
from receiver.store.ledger import Ledger


class InFlight:
    """Counts requests inside the handlers, so that shutdown can wait for them."""

    def __init__(self) -> None:
        self.count = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.draining = False


CONFIG = web.AppKey("config", Config)
GATEWAYS = web.AppKey("gateways", dict[str, Gateway])
POOL = web.AppKey("pool", asyncpg.Pool)
LEDGER = web.AppKey("ledger", Ledger)
IN_FLIGHT = web.AppKey("in_flight", InFlight)
UNVERIFIED = web.AppKey("unverified", UnverifiedLimiter)
QUERIERS = web.AppKey("queriers", dict[str, OrderQuerier])
HEALTH = web.AppKey("database_health", Health)
MIGRATED = web.AppKey("migrated", list[str])  # the migrations this start applied
