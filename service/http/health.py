"""GET /livez (the loop answers) and GET /readyz (the broker link and every consumer are up, and
the store takes writes).

A check's state is a phrase, optionally followed by ': ' and its detail (why the broker is not
connected: addresses, user, vhost, TLS errors; why the store takes no writes). Only a caller
with an admin token sees the detail; probes and everyone else get the phrase.
"""

from __future__ import annotations

from aiohttp import web

from service.app_keys import LIFECYCLE, LINK, SETTINGS, STORE_CHECK
from service.http.auth import ForbiddenError, UnauthorizedError, authorize_admin
from service.http.problems import json_response

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
    if not _shows_detail(request):
        checks = {name: state.partition(": ")[0] for name, state in checks.items()}
    document = {"status": "not ready" if missing else "ready", "checks": checks, "missing": missing}
    return json_response(document, 503 if missing else 200)


def _shows_detail(request: web.Request) -> bool:
    try:
        authorize_admin(request, request.app[SETTINGS].admin_tokens)
    except (UnauthorizedError, ForbiddenError):
        return False
    return True
