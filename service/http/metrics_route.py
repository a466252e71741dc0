"""GET /metrics, and counting every HTTP answer by route and status."""

from __future__ import annotations

from aiohttp import web

from service.app_keys import LINK, METRICS
from service.observability.metrics import CONTENT_TYPE_LATEST

__all__ = ["count_answer", "metrics_endpoint"]

# Any other method token becomes "other": a label value per invented method would grow forever.
_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))


async def metrics_endpoint(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    link = request.app[LINK]
    metrics.broker_connected.set(1 if link.status().connected else 0)
    metrics.broker_blocked.set(1 if link.blocked() else 0)
    return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def count_answer(request: web.Request, status: int) -> None:
    """Called by the one middleware (service.http.ingress) with the status it settled on. The route
    is the pattern (`/v1/events/{event_id}`), never the raw path, so labels stay few."""
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    method = request.method if request.method in _METHODS else "other"
    request.app[METRICS].http_answered(route, method, status)
