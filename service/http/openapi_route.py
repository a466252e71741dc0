"""GET /openapi.json: the OpenAPI document (openapi.json beside this module), cut to the routes
served here.

One static document describes every route conveyor has. Each process serves the part its role
and settings registered (a worker takes no events; the admin routes exist only with an admin
token), so a client never reads about a route that answers 404 at this address.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import orjson
from aiohttp import web

__all__ = ["add_openapi_route", "load_document", "served_routes"]

OPENAPI_PATH = "/openapi.json"
_SERVED_DOCUMENT = web.AppKey("openapi_document", bytes)


def load_document() -> dict[str, Any]:
    """The whole document as shipped in the package."""
    document: dict[str, Any] = orjson.loads(
        resources.files("service.http").joinpath("openapi.json").read_bytes()
    )
    return document


def served_routes(router: web.UrlDispatcher) -> set[tuple[str, str]]:
    """(method, path template) of every route; HEAD, which aiohttp adds beside GET, left out."""
    return {
        (route.method.lower(), resource.canonical)
        for resource in router.resources()
        for route in resource
        if route.method != "HEAD"
    }


def add_openapi_route(app: web.Application) -> None:
    """Register GET /openapi.json; call it after every other route, as it lists them."""
    app.router.add_get(OPENAPI_PATH, openapi_document)
    document = load_document()
    routes = served_routes(app.router)
    paths = {}
    for path, item in document["paths"].items():
        operations = {
            method: operation for method, operation in item.items() if (method, path) in routes
        }
        if operations:
            paths[path] = operations
    document["paths"] = paths
    app[_SERVED_DOCUMENT] = orjson.dumps(document)


async def openapi_document(request: web.Request) -> web.Response:
    return web.Response(body=request.app[_SERVED_DOCUMENT], content_type="application/json")
