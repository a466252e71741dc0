"""Typed application keys: what the aiohttp app holds, assembled in service.app."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from consumers.subscription import Subscription
from producers.publisher import Publisher
from service.admin.rate_history import RateHistory
from service.archive import Replays
from service.broker.link import BrokerLink
from service.http.admission import Admission
from service.http.delay_book import DelayBook
from service.http.idempotency import Deduplicator
from service.http.payload_check import PayloadCheck
from service.http.status_book import StatusBook
from service.observability.metrics import Metrics
from service.observability.tracing import Tracing
from service.schedules import Scheduler
from service.settings import Settings
from service.store import Store, StoreCheck

__all__ = [
    "ADMISSION",
    "DEDUPLICATOR",
    "DELAY_BOOK",
    "LIFECYCLE",
    "LINK",
    "METRICS",
    "PAYLOAD_CHECK",
    "PUBLISHER",
    "RATE_HISTORY",
    "REPLAYS",
    "SCHEDULER",
    "SETTINGS",
    "STATUS_BOOK",
    "STORE",
    "STORE_CHECK",
    "SUBSCRIPTIONS",
    "TRACING",
    "Lifecycle",
]


@dataclass(slots=True)
class Lifecycle:
    """Set when SIGTERM arrives: /readyz turns 503 before the listener closes."""

    draining: bool = False


SETTINGS = web.AppKey("settings", Settings)
ADMISSION = web.AppKey("admission", Admission)
PUBLISHER = web.AppKey("publisher", Publisher)
LINK = web.AppKey("link", BrokerLink)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
DEDUPLICATOR = web.AppKey("deduplicator", Deduplicator)
STATUS_BOOK = web.AppKey("status_book", StatusBook)
DELAY_BOOK = web.AppKey("delay_book", DelayBook)
STORE = web.AppKey("store", Store)
SCHEDULER = web.AppKey("scheduler", Scheduler)
STORE_CHECK = web.AppKey("store_check", StoreCheck)
METRICS = web.AppKey("metrics", Metrics)
RATE_HISTORY = web.AppKey("rate_history", RateHistory)
SUBSCRIPTIONS = web.AppKey("subscriptions", tuple[Subscription, ...])
PAYLOAD_CHECK = web.AppKey("payload_check", PayloadCheck)
TRACING = web.AppKey("tracing", Tracing)
# Only with CONVEYOR_ARCHIVE set.
REPLAYS = web.AppKey("replays", Replays)
