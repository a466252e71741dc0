"""Assembling the aiohttp application: routes for the role, and the broker link in cleanup_ctx."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Sequence
from functools import partial

import structlog
from aiohttp import web

from consumers.circuit import CircuitBreaker, CircuitState
from consumers.subscription import Subscription
from consumers.watch import HandlerSteps
from consumers.webhook import Webhook
from producers.first_copy import FirstCopyMarks
from producers.publisher import AmqpPublisher
from producers.topology import Topology
from service.admin.api import add_admin_routes, rate_history_context
from service.admin.archive_routes import add_archive_routes, archive_script
from service.admin.dead_letter_routes import add_dead_letter_routes
from service.admin.rate_history import INTERVAL_SECONDS as HISTORY_INTERVAL_SECONDS
from service.admin.schedule_routes import add_schedule_routes
from service.app_keys import (
    ADMISSION,
    DEDUPLICATOR,
    DELAY_BOOK,
    LIFECYCLE,
    LINK,
    METRICS,
    PAYLOAD_CHECK,
    PUBLISHER,
    REPLAYS,
    SCHEDULER,
    SETTINGS,
    STATUS_BOOK,
    STORE,
    STORE_CHECK,
    SUBSCRIPTIONS,
    TRACING,
    Lifecycle,
)
from service.archive import Replays
from service.broker.link import BrokerLink
from service.broker.queue_stats import POLL_SECONDS as QUEUE_POLL_SECONDS
from service.cancellation import STOP_SECONDS, stop_if_cancelled, stop_task
from service.clock import SYSTEM_CLOCK, Clock
from service.http.admission import Admission
from service.http.answers import answers_middleware
from service.http.api_docs import add_api_docs_routes
from service.http.asyncapi import add_asyncapi_route
from service.http.cancel_route import cancel_event
from service.http.delay_book import DelayBook
from service.http.health import livez, readyz
from service.http.idempotency import Deduplicator
from service.http.ingress import INGEST_PATH, ingest, publish_inside
from service.http.memory import MemoryReturn, glibc_trim
from service.http.metrics_route import metrics_endpoint
from service.http.openapi_route import add_openapi_route
from service.http.payload_check import PayloadCheck
from service.http.status_book import StatusBook
from service.http.status_route import event_status
from service.observability.loop_lag import LoopLagMonitor, loop_lag_context
from service.observability.metrics import Metrics
from service.observability.tracing import NoTracing, Tracing
from service.schedules import Schedule, Scheduler
from service.settings import Settings
from service.store import (
    BatchWriter,
    ClaimBatcher,
    Store,
    StoreCheck,
    first_copy_key,
    open_store,
)
from service.subscription_config import with_completions

_log = structlog.get_logger(component="store")
PURGE_INTERVAL_SECONDS = 600
ARCHIVE_LOOK_SECONDS = 60  # how often the archive's size and age gauges are refreshed

__all__ = ["PURGE_INTERVAL_SECONDS", "build_app"]


def build_app(
    settings: Settings,
    subscriptions: Sequence[Subscription] = (),
    *,
    max_backoff: float = 5.0,
    queue_poll_interval: float = QUEUE_POLL_SECONDS,
    purge_interval: float = PURGE_INTERVAL_SECONDS,
    tracing: Tracing | None = None,
    history_interval: float = HISTORY_INTERVAL_SECONDS,
    clock: Clock = SYSTEM_CLOCK,
    schedules: Sequence[Schedule] = (),
) -> web.Application:
    """The whole process as an aiohttp app; nothing connects until the app starts.

    `clock` is where the store, statuses, idempotency and schedules read the time.
    """
    subscriptions = with_completions(subscriptions, default=settings.completions)
    app = web.Application(
        middlewares=[answers_middleware],
        client_max_size=settings.max_body_bytes,
    )
    metrics = Metrics()
    publisher = (
        AmqpPublisher(timeout=settings.publish_timeout, observer=metrics)
        if settings.role.runs_ingress
        else None
    )
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[SUBSCRIPTIONS] = tuple(subscriptions)
    app[PAYLOAD_CHECK] = PayloadCheck(subscriptions)
    app[TRACING] = tracing = tracing or NoTracing()
    app[LIFECYCLE] = Lifecycle()
    # Every handler step timed, so a stall of the loop can be pinned on the handler that held it.
    steps = HandlerSteps()
    app[LINK] = BrokerLink(
        settings,
        publisher=publisher,
        subscriptions=subscriptions,
        consume=settings.role.runs_workers,
        metrics=metrics,
        tracer=tracing,
        steps=steps,
        max_backoff=max_backoff,
        queue_poll_interval=queue_poll_interval,
    )
    if settings.role.runs_workers:
        _watch_circuits(metrics, subscriptions)
    app.router.add_get("/livez", livez)
    app.router.add_get("/metrics", metrics_endpoint)
    if settings.admin_tokens:
        add_admin_routes(app)
        add_dead_letter_routes(app)
        add_schedule_routes(app)
        # The dashboard loads its archive card's script either way; the card hides itself
        # when the archive is off, and its routes then do not exist.
        app.router.add_get("/archive.js", archive_script)
        if settings.archive is not None:
            add_archive_routes(app)
        app.cleanup_ctx.append(rate_history_context(history_interval, clock))
    app.router.add_get("/readyz", readyz)
    if publisher is not None:
        app[PUBLISHER] = publisher
        memory = MemoryReturn(glibc_trim())
        admission = Admission(
            settings.max_concurrent_requests,
            settings.max_ingest_bytes,
            on_bytes=memory.note,
            on_quiet=memory.quiet,
        )
        metrics.watch_ingest_bytes(lambda: admission.bytes_in_flight, lambda: admission.peak_bytes)
        app[ADMISSION] = admission
        app.router.add_post(INGEST_PATH, ingest)
        # Event ids may hold '/' (sent percent-encoded), hence the pattern.
        app.router.add_get("/v1/events/{event_id:.+}", event_status)
        app.router.add_delete("/v1/events/{event_id:.+}", cancel_event)
    add_asyncapi_route(app, settings, subscriptions)
    add_api_docs_routes(app)
    add_openapi_route(app)  # last: the document it serves lists the routes above
    # The store closes last: consumers record their final states while the link drains.
    app.cleanup_ctx.append(_store(subscriptions, clock, purge_interval))
    # Handlers close after the link is down (cleanup runs in reverse order).
    app.cleanup_ctx.append(_handler_resources(subscriptions))
    app.cleanup_ctx.append(_broker_link)
    # After the link: the schedules stop firing before it closes.
    app.cleanup_ctx.append(_schedules(schedules, clock))
    lag = LoopLagMonitor(
        steps=steps, observe=metrics.event_loop_lag.observe, warn_after=settings.loop_lag_warning
    )
    app.cleanup_ctx.append(loop_lag_context(lag))
    return app


_CIRCUIT_GAUGE = {CircuitState.CLOSED: 0.0, CircuitState.HALF_OPEN: 1.0, CircuitState.OPEN: 2.0}


def _watch_circuits(metrics: Metrics, subscriptions: Sequence[Subscription]) -> None:
    """Each webhook endpoint's circuit, read when /metrics is scraped."""
    for subscription in subscriptions:
        handler = subscription.handler
        if isinstance(handler, Webhook):
            metrics.watch_circuit(subscription.name, partial(_circuit_gauge, handler.circuit))


def _circuit_gauge(circuit: CircuitBreaker) -> float:
    return _CIRCUIT_GAUGE[circuit.state]


def _handler_resources(
    subscriptions: Sequence[Subscription],
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def close_handlers(_app: web.Application) -> AsyncIterator[None]:
        yield
        for subscription in subscriptions:
            # Built-in handlers such as the webhook hold a connection pool.
            aclose = getattr(subscription.handler, "aclose", None)
            if aclose is not None:
                await aclose()

    return close_handlers


def _store(
    subscriptions: Sequence[Subscription], clock: Clock, purge_interval: float
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def open_and_close(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        store = await open_store(settings.store_url, clock=clock)
        try:
            marks = FirstCopyMarks(await first_copy_key(store))
        except BaseException:
            await store.close()
            raise
        writer = BatchWriter(store, queue_ahead=store.serial)
        book = StatusBook(
            store,
            writer,
            ttl=settings.status_ttl,
            dedup_window=settings.idempotency_ttl,
            subscriptions=subscriptions,
            clock=clock,
            marks=marks,
        )
        writer.on_written = book.wake_waiters
        writer.start()
        app[STORE] = store
        app[STATUS_BOOK] = book
        app[DELAY_BOOK] = DelayBook(store, writer, book, ttl=settings.status_ttl, clock=clock)
        # A duplicate waits for the first request's answer about as long as that one may take.
        # Concurrent claims (a batch's entries, concurrent requests) go out in few statements.
        # With a serial store (SQLite) the claims ride the status writer's turns: one wait in
        # its line for a turn's claims and answers instead of two.
        claims = ClaimBatcher(
            store, remember=settings.idempotency_ttl, writer=writer if store.serial else None
        )
        app[DEDUPLICATOR] = Deduplicator(
            claims,
            writer,
            ttl=settings.idempotency_ttl,
            wait=settings.publish_timeout + 1.0,
            clock=clock,
            store_timeout=settings.store_timeout,
        )
        app[STORE_CHECK] = check = StoreCheck(store.probe, timeout=settings.store_timeout)
        replays = _replays(app, store, clock)
        watching = (
            None
            if replays is None
            else asyncio.create_task(
                replays.watch_span(ARCHIVE_LOOK_SECONDS), name="conveyor-archive-span"
            )
        )
        purge = asyncio.create_task(
            _purge_expired(store, app[METRICS], purge_interval), name="conveyor-store-purge"
        )
        yield
        if replays is not None and watching is not None:
            await stop_task(watching, STOP_SECONDS)
            await replays.close()
        await stop_task(purge, STOP_SECONDS)
        await check.close()
        await claims.close()
        await book.close()
        await writer.close()
        await store.close()

    return open_and_close


def _replays(app: web.Application, store: Store, clock: Clock) -> Replays | None:
    """The archive's replays (and new subscriptions' backfills), when the archive is on."""
    settings = app[SETTINGS]
    if settings.archive is None:
        return None
    link = app[LINK]
    subscriptions: tuple[Subscription, ...] = app[SUBSCRIPTIONS]
    app[REPLAYS] = replays = Replays(
        channel=link.channel,
        topology=Topology(settings.namespace),
        subscriptions=subscriptions,
        store=store,
        metrics=app[METRICS],
        clock=clock,
        idle=settings.archive_read_idle,
        publish_timeout=settings.publish_timeout,
    )
    link.on_backfill = replays.backfill_soon
    return replays


async def _purge_expired(store: Store, metrics: Metrics, interval: float) -> None:
    while True:
        await _count_keys(store, metrics)
        await asyncio.sleep(interval)
        try:
            await store.purge_expired()
        except Exception as error:  # noqa: BLE001 - a failed purge is retried next round
            stop_if_cancelled(error)  # a cancellation the driver turned into its own error
            _log.exception("purging expired idempotency keys and statuses failed")


async def _count_keys(store: Store, metrics: Metrics) -> None:
    """The idempotency rows kept (a whole-table count: here, not on each scrape)."""
    try:
        counts = await store.count_keys()
    except Exception as error:  # noqa: BLE001 - the gauge keeps its last value until next round
        stop_if_cancelled(error)
        _log.warning("counting idempotency keys failed", error=str(error))
        return
    for scope in ("request", "event"):
        metrics.idempotency_keys.labels(scope).set(counts.get(scope, 0))


def _schedules(
    schedules: Sequence[Schedule], clock: Clock
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def fire_while_running(app: web.Application) -> AsyncIterator[None]:
        # Every process that runs the ingress fires every schedule; the ingress's dedup of
        # each tick's source and id makes one copy per tick go out.
        app[SCHEDULER] = scheduler = Scheduler(
            schedules,
            publish=functools.partial(publish_inside, app),
            store=app[STORE],
            book=app[STATUS_BOOK],
            clock=clock,
        )
        if app[SETTINGS].role.runs_ingress:
            scheduler.start()
        yield
        await scheduler.close()

    return fire_while_running


async def _broker_link(app: web.Application) -> AsyncIterator[None]:
    link = app[LINK]
    link.start(app[STATUS_BOOK], app[DELAY_BOOK])
    yield
    # By now the listener is closed and in-flight requests have finished (aiohttp's runner
    # waits for them before cleanup), so only the consumers are left to drain.
    try:
        await link.close()
    finally:
        # A last export may wait on a collector that is away: not on the event loop.
        await asyncio.to_thread(app[TRACING].shutdown)
