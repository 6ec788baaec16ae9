"""`receiver serve`: run the application, over HTTPS when a certificate is configured."""

from __future__ import annotations

import ssl

from aiohttp import web

from receiver.app import create_app
from receiver.config import Config, ServerConfig
from receiver.errors import ConfigError


def tls_context(server: ServerConfig, *, source: str) -> ssl.SSLContext | None:
    """A server TLS context (TLS 1.2 or newer) when tls_cert and tls_key are set."""
    if server.tls_cert is None or server.tls_key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(server.tls_cert, server.tls_key)
    except (OSError, ssl.SSLError) as exc:
        problem = getattr(exc, "strerror", None) or "not a matching PEM certificate and key"
        raise ConfigError(source=source, key="server.tls_cert", problem=problem) from None
    return ctx


def serve(config: Config, *, host: str | None, port: int | None, workers: int = 1) -> int:
    """Run until SIGTERM or SIGINT, then finish in-flight notifications and exit 0."""
    ssl_context = tls_context(config.server, source=config.source)
    app = create_app(config)
    web.run_app(
        app,
        host=host or config.server.host,
        port=config.server.port if port is None else port,
        ssl_context=ssl_context,
        shutdown_timeout=config.server.shutdown_timeout_s,
        access_log=None,
        print=None,
    )
    return 0
