"""`POST /notify/<gateway>` goes straight to its route, with the match info the router gives;
everything else goes the application's way."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from receiver.config import Config
from receiver.http.app import create_app
from receiver.http.connections import NotifyRoutes


class Recorder:
    """The application's handler stand-in: records what reaches it."""

    def __init__(self) -> None:
        self.requests: list[web.BaseRequest] = []

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        self.requests.append(request)
        return web.Response(text="application")


def _request(app: web.Application, method: str, path: str, **headers: str) -> web.Request:
    request: Any = make_mocked_request(method, path, headers=headers, app=app)
    request._match_info = None  # as the server makes it: no route yet
    return request


async def test_each_gateway_gets_the_match_info_the_router_gives(config: Config) -> None:
    app = create_app(config)
    app.freeze()
    routes = NotifyRoutes(app, Recorder())
    assert set(routes._routes) == {"/notify/gopay", "/notify/baofoo"}
    for path, direct in routes._routes.items():
        resolved = await app.router.resolve(_request(app, "POST", path))
        assert (dict(direct), direct.route, direct.apps) == (
            dict(resolved),
            resolved.route,
            (app,),
        )
        assert direct.handler is resolved.handler


async def test_a_notification_skips_the_application_handler(config: Config) -> None:
    app = create_app(config)
    fallback = Recorder()
    routes = NotifyRoutes(app, fallback)
    request = _request(app, "POST", "/notify/gopay", **{"Content-Type": "application/json"})
    seen: list[web.Request] = []

    async def handler(req: web.Request) -> web.StreamResponse:
        seen.append(req)
        return web.Response(text="direct")

    match_info = routes._routes["/notify/gopay"]
    routes._routes["/notify/gopay"] = web.UrlMappingMatchInfo(dict(match_info), _Route(handler))
    response = await routes(request)
    assert (getattr(response, "text", None), fallback.requests) == ("direct", [])
    assert seen == [request]
    assert request.match_info["provider"] == "gopay"


async def test_everything_else_goes_the_application_way(config: Config) -> None:
    app = create_app(config)
    fallback = Recorder()
    routes = NotifyRoutes(app, fallback)
    others = [
        _request(app, "GET", "/notify/gopay"),
        _request(app, "POST", "/notify/gopay", Expect="100-continue"),
        _request(app, "POST", "/notify/nosuch"),
        _request(app, "POST", "/notify/gopay/"),
        _request(app, "GET", "/healthz"),
    ]
    for request in others:
        response = await routes(request)
        assert getattr(response, "text", None) == "application"
    assert fallback.requests == others


async def test_with_middleware_every_request_goes_the_application_way(config: Config) -> None:
    app = create_app(config)

    @web.middleware
    async def passthrough(request: web.Request, handler: Any) -> web.StreamResponse:
        response: web.StreamResponse = await handler(request)
        return response

    app.middlewares.append(passthrough)
    fallback = Recorder()
    routes = NotifyRoutes(app, fallback)
    request = _request(app, "POST", "/notify/gopay")
    await routes(request)
    assert (routes._routes, fallback.requests) == ({}, [request])


class _Route:
    """A route stand-in that only carries a handler."""

    def __init__(self, handler: Any) -> None:
        self.handler = handler
