"""/v1/admin: what an operator sees and does, behind CONVEYOR_ADMIN_TOKEN (off when unset).

Every request is authenticated by `admin_operation`, which also writes the audit line: which
token (by its name) did what.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any

import aiormq.exceptions
import structlog
from aiohttp import web

from consumers.retry import delay_label
from consumers.subscription import Subscription
from consumers.topology import subscription_queue_names
from producers.topology import Topology
from service.admin.rate_history import INTERVAL_SECONDS, RateHistory
from service.app_keys import LINK, METRICS, RATE_HISTORY, SETTINGS, SUBSCRIPTIONS
from service.broker.queue_stats import read_queue_stats
from service.cancellation import STOP_SECONDS, stop_task
from service.clock import SYSTEM_CLOCK, Clock
from service.http.auth import authorize_admin
from service.http.problems import Problem, json_response, problem_response

__all__ = [
    "ADMIN_PREFIX",
    "PAGE_HEADERS",
    "add_admin_routes",
    "admin_operation",
    "rate_history_context",
]

_log = structlog.get_logger(component="admin")
ADMIN_PREFIX = "/v1/admin"
# A conveyor belt: a dark tile, a blue belt, two parcels.
_FAVICON = (
    b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32">'
    b'<rect width="32" height="32" rx="6" fill="#1d2330"/>'
    b'<rect x="4" y="20" width="24" height="5" rx="2.5" fill="#3b6fd6"/>'
    b'<rect x="7" y="11" width="7" height="8" rx="1" fill="#f6f7f9"/>'
    b'<rect x="17" y="13" width="7" height="6" rx="1" fill="#f6f7f9"/>'
    b"</svg>"
)


def add_admin_routes(app: web.Application) -> None:
    app.router.add_get(f"{ADMIN_PREFIX}/subscriptions", list_subscriptions)
    app.router.add_get(f"{ADMIN_PREFIX}/dashboard", dashboard_data)
    app.router.add_get(f"{ADMIN_PREFIX}/dashboard/history", dashboard_history)
    app.router.add_get("/", dashboard_page)
    app.router.add_get("/dashboard.js", dashboard_script)
    app.router.add_get("/favicon.ico", favicon)


def rate_history_context(
    interval: float = INTERVAL_SECONDS, clock: Clock = SYSTEM_CLOCK
) -> Callable[[web.Application], AsyncIterator[None]]:
    """The dashboard's ring of recent rates, sampled by a task for as long as the app runs."""

    async def sample_while_running(app: web.Application) -> AsyncIterator[None]:
        names = [subscription.name for subscription in app[SUBSCRIPTIONS]]
        app[RATE_HISTORY] = history = RateHistory(
            app[METRICS], names, interval=interval, clock=clock
        )
        task = asyncio.create_task(history.run(), name="conveyor-rate-history")
        yield
        await stop_task(task, STOP_SECONDS)

    return sample_while_running


def admin_operation(request: web.Request, operation: str, **details: Any) -> str:
    """Authenticate the request (401/403) and log the operation under the token's name."""
    who = authorize_admin(request, request.app[SETTINGS].admin_tokens)
    _log.info("admin operation", admin=who, operation=operation, path=request.path, **details)
    return who


async def list_subscriptions(request: web.Request) -> web.Response:
    admin_operation(request, "subscriptions.list")
    listed = await _subscription_entries(request)
    return json_response({"subscriptions": listed})


async def dashboard_data(request: web.Request) -> web.Response:
    """What the dashboard polls: the subscriptions listing plus this process's running totals."""
    authorize_admin(request, request.app[SETTINGS].admin_tokens)  # polled: not audit-logged
    metrics = request.app[METRICS]
    entries = await _subscription_entries(request)
    for entry in entries:
        name = entry["name"]
        entry["handler_seconds"] = metrics.handler_totals(name)
        entry["recent_failures"] = [
            {
                "event_id": failure.event_id,
                "type": failure.event_type,
                "error": f"{failure.error_class}: {failure.error_message}",
                "outcome": failure.outcome,
                "at": failure.at,
            }
            for failure in metrics.recent_failures.get(name, ())
        ]
    ingest = None
    if request.app[SETTINGS].role.runs_ingress:
        accepted, refused = metrics.ingest_totals()
        ingest = {"accepted": int(accepted), "refused": {k: int(v) for k, v in refused.items()}}
    document = {
        "subscriptions": entries,
        "broker_connected": request.app[LINK].status().connected,
        "ingest": ingest,
        "time": request.app[RATE_HISTORY].clock.now(),
    }
    return json_response(document)


async def dashboard_history(request: web.Request) -> web.Response:
    """The ring of recent rates the sparklines start from; `?since=` for the newer ones only."""
    authorize_admin(request, request.app[SETTINGS].admin_tokens)  # polled: not audit-logged
    since_text = request.query.get("since")
    since = None
    if since_text is not None:
        try:
            since = float(since_text)  # aiohttp bounds the request line: no huge texts
        except ValueError:
            since = math.nan
        if not math.isfinite(since) or since < 0:
            return problem_response(
                Problem(
                    400,
                    "invalid-admin-request",
                    "Invalid request",
                    "since must be a time in Unix seconds (a number from 0)",
                )
            )
    history = request.app[RATE_HISTORY]
    document = {
        "interval_seconds": history.interval,
        "span_seconds": history.span,
        "time": history.clock.now(),
        "samples": [sample.to_json() for sample in history.since(since)],
    }
    return json_response(document)


PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'none'",
    # Its buttons act (replay): no other site may frame it and trick a click.
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


async def dashboard_page(_request: web.Request) -> web.Response:
    # The page holds no data: it asks for the admin token and fetches everything with it.
    page = resources.files("service.admin").joinpath("dashboard.html").read_bytes()
    return web.Response(body=page, content_type="text/html", headers=PAGE_HEADERS)


async def dashboard_script(_request: web.Request) -> web.Response:
    script = resources.files("service.admin").joinpath("dashboard.js").read_bytes()
    return web.Response(body=script, content_type="text/javascript", headers=PAGE_HEADERS)


async def favicon(_request: web.Request) -> web.Response:
    # Browsers ask for it on their own, without the token: nothing in it is secret.
    return web.Response(
        body=_FAVICON,
        content_type="image/svg+xml",
        headers={"Cache-Control": "public, max-age=86400"},
    )


async def _subscription_entries(request: web.Request) -> list[dict[str, Any]]:
    topology = Topology(request.app[SETTINGS].namespace)
    link = request.app[LINK]
    listed = []
    for subscription in request.app[SUBSCRIPTIONS]:
        entry = _describe(subscription, topology)
        # One channel per subscription: a queue missing on the broker closes its channel.
        try:
            async with link.channel() as channel:
                stats = await read_queue_stats(channel, topology, subscription)
        except aiormq.exceptions.ChannelNotFoundEntity:
            entry["problem"] = "its queues are not declared on the broker (no process started it)"
        else:
            entry["queue"] |= {"messages": stats.messages, "consumers": stats.consumers}
            for tier in entry["retry"]["tiers"]:
                tier["messages"] = stats.retry_tiers.get(tier["delay"], 0)
            entry["dead_letter"]["messages"] = stats.dead_letters
            for partition in (entry["ordering"] or {}).get("queues", ()):
                messages, consumers = stats.queues.get(partition["name"], (0, 0))
                partition |= {"messages": messages, "consumers": consumers}
        entry["handled_here"] = request.app[METRICS].settled_here(subscription.name)
        entry["unacked_here"] = sum(
            consumer.unacked
            for consumer in link.consumers
            if consumer.subscription.name == subscription.name
        )
        rates = request.app[METRICS].rates.get(subscription.name)
        entry["rates"] = (
            None
            if rates is None
            else {
                "in_per_second": round(rates.in_per_second, 3),
                "out_per_second": round(rates.out_per_second, 3),
                "over_seconds": round(rates.over_seconds, 3),
            }
        )
        listed.append(entry)
    return listed


def _describe(subscription: Subscription, topology: Topology) -> dict[str, Any]:
    name = subscription.name
    return {
        "name": name,
        "events": list(subscription.events),
        "handler": subscription.handler_path,
        "prefetch": subscription.prefetch,
        "concurrency": subscription.concurrency,
        "timeout_seconds": subscription.timeout,
        "deduplicate": subscription.deduplicate,
        "completions": subscription.completions,
        "queue": {
            "name": topology.queue(name)
            if subscription.ordering is None
            else topology.partition_exchange(name)
        },
        "ordering": None
        if subscription.ordering is None
        else {
            "by": subscription.ordering.by,
            "partitions": subscription.ordering.partitions,
            "queues": [
                {"name": queue} for queue in subscription_queue_names(topology, subscription)
            ],
        },
        "retry": {
            "in_process": subscription.retry.in_process,
            "tiers": [
                {
                    "delay": delay_label(delay),
                    "queue": topology.retry_queue(name, delay_label(delay)),
                }
                for delay in subscription.tier_delays
            ],
        },
        "dead_letter": {"queue": topology.dead_letter_queue(name)},
    }
