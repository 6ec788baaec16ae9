"""The bare anchor: an aiohttp endpoint that reads the body and returns GoPay's SUCCESS reply.

Everything the service does beyond this (signature check, parsing, the ledger, logging) is what
separates the service's rate from this one. Run: `python -m bench.bare --port P`.
"""

from __future__ import annotations

import argparse

from aiohttp import web

try:
    import uvloop
except ImportError:
    uvloop = None  # type: ignore[assignment]

SUCCESS_BODY = b'{"result_code":"OK","result_msg":"SUCCESS"}'


async def notify(request: web.Request) -> web.Response:
    """Read the whole body, then acknowledge, as the service does after its commit."""
    await request.read()
    return web.Response(body=SUCCESS_BODY, content_type="application/json")


async def ready(_request: web.Request) -> web.Response:
    """Always ready: there is nothing behind it."""
    return web.json_response({"status": "ready"})


def create_app() -> web.Application:
    """The bare application: the service's routes, none of its work."""
    app = web.Application()
    app.router.add_post("/notify/{provider}", notify)
    app.router.add_get("/readyz", ready)
    return app


def main() -> None:
    """Serve on loopback until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    # The service's loop (receiver/run/eventloop.py): the two CPU costs compare like for like.
    loop = uvloop.new_event_loop() if uvloop is not None else None
    web.run_app(
        create_app(), host="127.0.0.1", port=args.port, access_log=None, print=None, loop=loop
    )


if __name__ == "__main__":
    main()
