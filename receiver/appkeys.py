"""Typed application state, declared in one place."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from receiver.config import Config
from receiver.gateways import Gateway
from receiver.ledger import Ledger

CONFIG = web.AppKey("config", Config)
GATEWAYS = web.AppKey("gateways", dict[str, Gateway])
POOL = web.AppKey("pool", asyncpg.Pool)
LEDGER = web.AppKey("ledger", Ledger)
