"""Prometheus metrics: one registry per app, fed by the ingress, the publisher and the consumers.

The publisher and the consumer runtime only know their observer protocols; `Metrics` implements
both, so neither package imports prometheus. Queue depths come from a poll (passive declares),
not from the management plugin, which a deployment may not have.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from consumers.observe import FailureReport

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "QueueRates"]

RECENT_FAILURES = 10


@dataclass(frozen=True, slots=True)
class QueueRates:
    in_per_second: float
    out_per_second: float
    over_seconds: float


_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_LATENESS_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)
_HANDLER_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


_Metric = TypeVar("_Metric", Counter, Histogram)


def _child(children: dict[tuple[str, ...], _Metric], metric: _Metric, *labels: str) -> _Metric:
    """`metric.labels(*labels)`, looked up in `children` after the first time."""
    child = children.get(labels)
    if child is None:
        child = children[labels] = metric.labels(*labels)
    return child


class Metrics:
    """Every metric conveyor exposes on GET /metrics, in a registry of its own."""

    def __init__(self) -> None:
        # Labelled children by label values: `labels()` validates, locks and looks up on every
        # call, a cost per request on the ingest path. The label sets stay few: routes are
        # patterns, methods a fixed set, outcomes and reasons our own slugs.
        # The consumer's too (handler times, settled deliveries): subscriptions are configured.
        self._answered: dict[tuple[str, ...], Counter] = {}
        self._rejected: dict[tuple[str, ...], Counter] = {}
        self._confirm_times: dict[tuple[str, ...], Histogram] = {}
        self._handler_times: dict[tuple[str, ...], Histogram] = {}
        self._settled: dict[tuple[str, ...], Counter] = {}
        self._looked_up: dict[tuple[str, ...], Counter] = {}
        self._skipped: dict[tuple[str, ...], Counter] = {}
        self.recent_failures: dict[str, deque[FailureReport]] = {}
        # subscription -> (monotonic time, messages ready, deliveries settled here) at the last poll
        self._samples: dict[str, tuple[float, int, float]] = {}
        self.rates: dict[str, QueueRates] = {}
        self.registry = CollectorRegistry()
        registry = self.registry
        # process_* (memory, CPU, open files), python_info and python_gc_*, as the default
        # registry has them.
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self.http_requests = Counter(
            "conveyor_http_requests",
            "HTTP requests answered, by route, method and status",
            ("route", "method", "status"),
            registry=registry,
        )
        self.events_accepted = Counter(
            "conveyor_events_accepted",
            "Events RabbitMQ confirmed and the ingress answered 202 for",
            registry=registry,
        )
        self.events_rejected = Counter(
            "conveyor_events_rejected",
            "Events the ingress did not accept, by problem type",
            ("reason",),
            registry=registry,
        )
        self.events_deduplicated = Counter(
            "conveyor_events_deduplicated",
            "Events answered from an earlier acceptance (same source and id), not published again",
            registry=registry,
        )
        self.publish_seconds = Histogram(
            "conveyor_publish_confirm_seconds",
            "Time from publish to RabbitMQ's confirm (or failure), by outcome",
            ("outcome",),
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.publishes_in_flight = Gauge(
            "conveyor_publishes_in_flight",
            "Publishes waiting for RabbitMQ's confirm",
            registry=registry,
        )
        self.handler_seconds = Histogram(
            "conveyor_handler_seconds",
            "Time a delivery spent in its handler (in-process retries included)",
            ("subscription",),
            buckets=_HANDLER_BUCKETS,
            registry=registry,
        )
        self.deliveries = Counter(
            "conveyor_deliveries",
            "Deliveries settled, by subscription and outcome "
            "(acked, retry-scheduled, dead-lettered, skipped, filtered, deferred, returned)",
            ("subscription", "outcome"),
            registry=registry,
        )
        self.events_filtered = Counter(
            "conveyor_events_filtered",
            "Deliveries the subscription's attribute filters left out, acked without a handler",
            ("subscription",),
            registry=registry,
        )
        self.rate_limited_seconds = Counter(
            "conveyor_rate_limited_seconds",
            "Seconds handler starts waited for the subscription's rate limit (summed over "
            "deliveries; each wait holds a handler slot)",
            ("subscription",),
            registry=registry,
        )
        self.rate_limited_waiting = Gauge(
            "conveyor_rate_limited_waiting",
            "Deliveries waiting for the subscription's rate limit right now",
            ("subscription",),
            registry=registry,
        )
        self.dedup_lookups = Counter(
            "conveyor_dedup_lookups",
            "Deliveries that asked the store whether their event already succeeded, by "
            "subscription",
            ("subscription",),
            registry=registry,
        )
        self.dedup_lookups_skipped = Counter(
            "conveyor_dedup_lookups_skipped",
            "Deliveries of deduplicating subscriptions that needed no lookup: provably the "
            "first copy of their event, by subscription",
            ("subscription",),
            registry=registry,
        )
        self.retries = Counter(
            "conveyor_retries",
            "Deliveries moved into a retry tier, by subscription and tier",
            ("subscription", "tier"),
            registry=registry,
        )
        self.delayed_events = Counter(
            "conveyor_delayed_events",
            "Delayed events by what became of them: scheduled (confirmed into the delay chain), "
            "released (routed when due) or cancelled (acked unrouted when due)",
            ("outcome",),
            registry=registry,
        )
        self.delayed_lateness_seconds = Histogram(
            "conveyor_delayed_lateness_seconds",
            "How late a delayed event was routed, after its deliverat",
            buckets=_LATENESS_BUCKETS,
            registry=registry,
        )
        self.delayed_waiting = Gauge(
            "conveyor_delayed_events_waiting",
            "Delayed events waiting in the delay chain (polled), by an upper bound of the "
            "seconds until they are due (a level of the chain holds those due within twice "
            "its wait)",
            ("due_within_seconds",),
            registry=registry,
        )
        self.queue_messages = Gauge(
            "conveyor_queue_messages",
            "Messages ready in a subscription's queues (polled), by queue kind (main, dlq, retry)",
            ("subscription", "queue"),
            registry=registry,
        )
        self.queue_consumers = Gauge(
            "conveyor_queue_consumers",
            "Consumers attached to a subscription's queue (polled)",
            ("subscription",),
            registry=registry,
        )
        self.dead_letters_replayed = Counter(
            "conveyor_dead_letters_replayed",
            "Dead letters sent back for another round, by queue",
            ("queue",),
            registry=registry,
        )
        self.dead_letters_discarded = Counter(
            "conveyor_dead_letters_discarded",
            "Dead letters removed on an operator's explicit request, by queue",
            ("queue",),
            registry=registry,
        )
        self.broker_blocked = Gauge(
            "conveyor_broker_blocked",
            "1 while RabbitMQ blocks publishing (memory or disk alarm)",
            registry=registry,
        )
        self.idempotency_keys = Gauge(
            "conveyor_idempotency_keys",
            "Rows kept in the store's idempotency table, by scope (request: Idempotency-Key "
            "headers; event: CloudEvents source and id), counted at start and at each purge",
            ("scope",),
            registry=registry,
        )
        self.broker_connected = Gauge(
            "conveyor_broker_connected",
            "1 while the broker connection and channels are up",
            registry=registry,
        )

        self.webhook_circuit = Gauge(
            "conveyor_webhook_circuit_state",
            "A webhook subscription's endpoint circuit: 0 closed, 1 half-open (probing), "
            "2 open (events go to the retry ladder without a request)",
            ("subscription",),
            registry=registry,
        )

        self.ingest_bytes_in_flight = Gauge(
            "conveyor_ingest_bytes_in_flight",
            "Bytes reserved by ingest requests in flight (bodies, parsed events, frames)",
            registry=registry,
        )
        self.ingest_bytes_peak = Gauge(
            "conveyor_ingest_bytes_peak",
            "The most bytes ingest requests held at once since the process started",
            registry=registry,
        )
        self.archive_events = Gauge(
            "conveyor_archive_events",
            "Events the archive stream holds (its newest offset less its oldest), at the last look",
            registry=registry,
        )
        self.archive_oldest_age = Gauge(
            "conveyor_archive_oldest_age_seconds",
            "Age of the oldest event the archive still holds, at the last look",
            registry=registry,
        )
        self.archive_replayed = Counter(
            "conveyor_archive_replayed",
            "Archived events published again by replays (backfills included), by subscription",
            ("subscription",),
            registry=registry,
        )
        self.archive_replays_running = Gauge(
            "conveyor_archive_replays_running",
            "Archive replays running in this process",
            registry=registry,
        )
        self.event_loop_lag = Histogram(
            "conveyor_event_loop_lag_seconds",
            "How late the event loop ran a timer, measured every tick of the lag monitor",
            buckets=_LAG_BUCKETS,
            registry=registry,
        )

    def watch_circuit(self, subscription: str, state: Callable[[], float]) -> None:
        """Read a webhook endpoint's circuit state when scraped."""
        self.webhook_circuit.labels(subscription).set_function(state)

    def watch_ingest_bytes(self, in_flight: Callable[[], float], peak: Callable[[], float]) -> None:
        """Read the ingest bytes held (now, and at most) when scraped: no cost per request."""
        self.ingest_bytes_in_flight.set_function(in_flight)
        self.ingest_bytes_peak.set_function(peak)

    def http_answered(self, route: str, method: str, status: int) -> None:
        _child(self._answered, self.http_requests, route, method, str(status)).inc()

    def event_rejected(self, reason: str) -> None:
        _child(self._rejected, self.events_rejected, reason).inc()

    # producers.PublishObserver
    def publish_started(self) -> None:
        self.publishes_in_flight.inc()

    def publish_finished(self, outcome: str, seconds: float) -> None:
        self.publishes_in_flight.dec()
        _child(self._confirm_times, self.publish_seconds, outcome).observe(seconds)

    # consumers.DeliveryObserver
    def handler_ran(self, subscription: str, seconds: float) -> None:
        _child(self._handler_times, self.handler_seconds, subscription).observe(seconds)

    def delivery_settled(self, subscription: str, outcome: str) -> None:
        _child(self._settled, self.deliveries, subscription, outcome).inc()

    def retry_scheduled(self, subscription: str, tier: str) -> None:
        self.retries.labels(subscription, tier).inc()

    def event_filtered(self, subscription: str) -> None:
        self.events_filtered.labels(subscription).inc()

    def rate_wait_began(self, subscription: str) -> None:
        self.rate_limited_waiting.labels(subscription).inc()

    def rate_wait_ended(self, subscription: str, seconds: float) -> None:
        self.rate_limited_waiting.labels(subscription).dec()
        self.rate_limited_seconds.labels(subscription).inc(seconds)

    def dedup_lookup(self, subscription: str, *, skipped: bool) -> None:
        if skipped:
            _child(self._skipped, self.dedup_lookups_skipped, subscription).inc()
        else:
            _child(self._looked_up, self.dedup_lookups, subscription).inc()

    def failure_seen(self, subscription: str, failure: FailureReport) -> None:
        # The dashboard's "recent failures": the last few this process saw, per subscription.
        recent = self.recent_failures.setdefault(subscription, deque(maxlen=RECENT_FAILURES))
        recent.appendleft(failure)

    def note_queue_sample(self, subscription: str, now: float, ready: int) -> None:
        """Rates over the last poll interval from two samples of the queue and our counters.

        Out: deliveries this process settled (not returned) per second. In: that plus the growth
        of the ready count, an estimate that is exact when this process is the only consumer.
        """
        settled = sum(
            count
            for outcome, count in self.settled_here(subscription).items()
            if outcome != "returned"
        )
        previous = self._samples.get(subscription)
        self._samples[subscription] = (now, ready, settled)
        if previous is None or now <= previous[0]:
            return
        seconds = now - previous[0]
        out_rate = (settled - previous[2]) / seconds
        in_rate = max(0.0, out_rate + (ready - previous[1]) / seconds)
        self.rates[subscription] = QueueRates(in_rate, out_rate, seconds)

    def settled_here(self, subscription: str) -> dict[str, int]:
        """Deliveries this process settled for the subscription, by outcome, since it started."""
        return {
            sample.labels["outcome"]: int(sample.value)
            for family in self.deliveries.collect()
            for sample in family.samples
            if sample.name.endswith("_total") and sample.labels.get("subscription") == subscription
        }

    def handler_totals(self, subscription: str) -> dict[str, float]:
        """The handler-duration histogram's running sum and count for the subscription."""
        totals = {"sum": 0.0, "count": 0.0}
        for family in self.handler_seconds.collect():
            for sample in family.samples:
                if sample.labels.get("subscription") != subscription:
                    continue
                for key in totals:
                    if sample.name.endswith("_" + key):
                        totals[key] = sample.value
        return totals

    def ingest_totals(self) -> tuple[float, dict[str, float]]:
        """Events the ingress accepted, and those it refused by reason, since it started."""
        accepted = next(
            (
                sample.value
                for family in self.events_accepted.collect()
                for sample in family.samples
                if sample.name.endswith("_total")
            ),
            0.0,
        )
        refused = {
            sample.labels["reason"]: sample.value
            for family in self.events_rejected.collect()
            for sample in family.samples
            if sample.name.endswith("_total")
        }
        return accepted, refused

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
