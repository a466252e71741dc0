"""GET /livez (the loop answers) and GET /readyz (the broker link and every consumer are up, and
the store takes writes)."""

from __future__ import annotations

from aiohttp import web

from service.keys import LIFECYCLE, LINK, STORE_CHECK
from service.problems import json_response

__all__ = ["livez", "readyz"]


async def livez(_request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"alive"}', content_type="application/json")


async def readyz(request: web.Request) -> web.Response:
    link = request.app[LINK]
    checks: dict[str, str] = {}
    if request.app[LIFECYCLE].draining:
        checks["lifecycle"] = "shutting down"
    status = link.status()
    checks["broker"] = "connected" if status.connected else f"not connected: {status.problem}"
    if status.connected:
        for consumer in link.consumers:
            attached = await consumer.attached()
            key = f"subscription:{consumer.subscription.name}"
            checks[key] = "consuming" if attached else "consumer not attached"
        for name in link.missing_subscriptions():
            checks[f"subscription:{name}"] = "consumer not started"
    store_problem = await request.app[STORE_CHECK].problem()
    checks["store"] = "writable" if store_problem is None else f"not writable: {store_problem}"
    passed = ("connected", "consuming", "writable")
    missing = [name for name, state in checks.items() if state not in passed]
    document = {"status": "not ready" if missing else "ready", "checks": checks, "missing": missing}
    return json_response(document, 503 if missing else 200)
