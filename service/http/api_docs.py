"""GET /docs: the OpenAPI document as a browsable page (Swagger UI), no CDN.

Swagger UI's files come from the `swagger-ui-py` package (Swagger UI 5, which renders OpenAPI
3.1); only the two the page loads are served, beside a small script of ours that starts it. The
page runs under a Content-Security-Policy that allows no inline script and no other origin.
"""

from __future__ import annotations

import importlib.util
from importlib import resources
from pathlib import Path

from aiohttp import web

__all__ = ["DOCS_ASSETS", "DOCS_PATH", "add_api_docs_routes"]

DOCS_PATH = "/docs"
_SWAGGER_UI = "swagger_ui"  # the import name of swagger-ui-py
_STARTER = "api-docs.js"
_SWAGGER_FILES = ("swagger-ui-bundle.js", "swagger-ui.css")
DOCS_ASSETS = (*_SWAGGER_FILES, _STARTER)  # all /docs/{asset} serves
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
}
# The files change only with the package: a browser may keep them a while.
_ASSET_HEADERS = {**_PAGE_HEADERS, "Cache-Control": "public, max-age=3600"}
_ASSETS = web.AppKey("api_docs_assets", dict[str, Path])
# Named, not guessed: the guess depends on the machine's mime.types.
_CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css"}


def add_api_docs_routes(app: web.Application) -> None:
    swagger_ui = _swagger_ui_files()
    here = Path(str(resources.files("service.http")))
    app[_ASSETS] = {
        **{name: swagger_ui / name for name in _SWAGGER_FILES},
        _STARTER: here / "api_docs.js",
    }
    app.router.add_get(DOCS_PATH, docs_page)
    app.router.add_get(DOCS_PATH + "/{asset}", docs_asset)


def _swagger_ui_files() -> Path:
    # Found, not imported: importing it loads its templates for other frameworks (Jinja2, YAML).
    spec = importlib.util.find_spec(_SWAGGER_UI)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the swagger-ui-py package, a dependency of conveyor, is missing")
    return Path(spec.submodule_search_locations[0]) / "static"


async def docs_page(_request: web.Request) -> web.Response:
    page = resources.files("service.http").joinpath("api_docs.html").read_bytes()
    return web.Response(
        body=page, content_type="text/html", headers={**_PAGE_HEADERS, "Cache-Control": "no-cache"}
    )


async def docs_asset(request: web.Request) -> web.FileResponse:
    path = request.app[_ASSETS].get(request.match_info["asset"])
    if path is None:
        raise web.HTTPNotFound
    headers = {**_ASSET_HEADERS, "Content-Type": _CONTENT_TYPES[path.suffix]}
    return web.FileResponse(path, headers=headers)
