"""The stages a delivery passes through in consumers.pipeline, and what they hand each other."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Protocol

import pydantic
import structlog

from consumers.attempts import AttemptsResult
from consumers.dead_letter import (
    ATTEMPTS,
    REPLAY,
    REPLAYS,
    RETRIES,
    DeadLetterReason,
    Failure,
    read_int,
    without_conveyor_headers,
)
from consumers.decoding import MalformedEventError, decode_event
from consumers.delivery import Inbound
from consumers.delivery_order import DeliveryOrder
from consumers.event import Event
from consumers.filters import all_match
from consumers.first_copies import first_copy_mark
from consumers.observe import DeliveryObserver, FailureReport, HandlerTracer
from consumers.pacing import Pacer
from consumers.payloads import INVALID_DATA_ERROR, describe_invalid_data, validate_data
from consumers.reporting import StatusOf, StatusReporter, malformed_status
from consumers.settling import Outcome, Settler, Verdict
from consumers.status import DeliveryState
from consumers.subscription import Subscription
from producers.wire import TRACEPARENT_HEADER

__all__ = [
    "Decode",
    "Judging",
    "Report",
    "RunHandler",
    "SkipFiltered",
    "SkipSucceeded",
    "Stage",
    "ValidatePayload",
]

_log = structlog.get_logger(component="consumer")
# What a delivery taken by a shutdown before its handler started comes to: returned, unhandled.
MAX_REPLAY_ID_LENGTH = 64
_NOT_STARTED = AttemptsResult(0, Failure("ShutdownError", "the consumer is shutting down", ""))


@dataclass(slots=True)
class Judging:
    """One decoded delivery on its way through the stages."""

    message: Inbound
    headers: dict[str, Any]  # the message's, minus conveyor's own unless it came from our ladder
    event: Event[Any]  # its data validated once ValidatePayload passed it
    status: StatusOf  # builds this event's status updates
    attempts_before: int  # handler attempts made in earlier deliveries
    retries: int  # passes through the retry ladder so far
    # The ingress's first-copy mark, when nothing else about the delivery says it may be a
    # copy (consumers.first_copies); the ledger still checks it is this event's.
    first_copy_mark: object | None = None


class Stage(Protocol):
    """A check between decoding and the handler: a verdict ends the delivery's judging there,
    None passes it on. No broker I/O: the settler carries out the verdict."""

    async def __call__(self, judging: Judging) -> Verdict | None: ...


class Decode:
    """The message read into an Event; one that cannot be read is dead-lettered as malformed."""

    def __init__(
        self,
        subscription: Subscription,
        queues: Collection[str],
        settler: Settler,
        own_exchange: str | None = None,
    ) -> None:
        self._name = subscription.name
        self._queues = queues
        self._settler = settler
        # An ordered subscription's partition exchange: a replay reaches its partitions there.
        self._own_exchange = own_exchange

    def __call__(self, message: Inbound) -> Judging | Verdict:
        headers: dict[str, Any] = dict(message.headers or {})
        mark = None
        # A retry tier dead-letters through the default exchange with our queue as routing key;
        # an archive replay comes that way too, or through an ordered subscription's exchange.
        if not (
            (message.exchange == "" and message.routing_key in self._queues)
            or (self._own_exchange is not None and message.exchange == self._own_exchange)
        ):
            mark = first_copy_mark(headers, redelivered=bool(message.redelivered))
            # Counters are ours only when we wrote them: a fresh publish (or a replay from the
            # DLQ) that carries x-conveyor-* headers starts from the first attempt again.
            headers = without_conveyor_headers(headers)
        attempts_before = read_int(headers, ATTEMPTS)
        try:
            event = decode_event(
                headers,
                message.content_type,
                message.body,
                correlation_id=message.correlation_id,
                redelivered=bool(message.redelivered),
                attempt=attempts_before + 1,
            )
        except Exception as error:  # noqa: BLE001 - decoding is pure: a failure is the message's
            # The DLQ entry says why; where its id and source can still be read, its status
            # says so too. An error other than MalformedEventError is a decoding bug the
            # message found; retrying cannot help, and its class in the DLQ entry shows it.
            failure, identity = Failure.from_exception(error), None
            if isinstance(error, MalformedEventError):
                failure, identity = Failure("MalformedEventError", str(error), ""), error.identity
            replays = read_int(headers, REPLAYS)
            return self._settler.dead_letter(
                message,
                headers,
                failure,
                attempts_before,
                reason=DeadLetterReason.MALFORMED,
                status=malformed_status(identity, self._name, replays, failure),
            )
        if event.id != message.message_id or event.type != message.routing_key:
            # Bound by the pipeline from the message's properties, which usually say the same.
            structlog.contextvars.bind_contextvars(event_id=event.id, event_type=event.type)
        status = StatusOf(event, self._name, read_int(headers, REPLAYS), replay_id(headers))
        retries = read_int(headers, RETRIES)
        return Judging(message, headers, event, status, attempts_before, retries, mark)


class SkipFiltered:
    """Attribute filters: an event they leave out is acked unhandled, its status `filtered`."""

    def __init__(self, subscription: Subscription) -> None:
        self._filters = subscription.filters

    async def __call__(self, judging: Judging) -> Verdict | None:
        if all_match(self._filters, judging.status.attributes):
            return None
        _log.debug("event left out by the subscription's filters; acked unhandled")
        filtered = judging.status(DeliveryState.FILTERED, judging.attempts_before)
        return Verdict(Outcome.FILTERED, status=filtered)


def replay_id(headers: dict[str, Any]) -> str | None:
    """The archive replay this message belongs to, if it is one (an id of at most 64 bytes)."""
    value = headers.get(REPLAY)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str) and 0 < len(value) <= MAX_REPLAY_ID_LENGTH:
        return value
    return None


class SkipSucceeded:
    """Deduplication: an event that already succeeded here is acked without its handler.

    The store is not asked about a delivery that provably is its event's first copy (marked
    by the ingress, and neither redelivered, retried nor replayed): no earlier copy can have
    succeeded. A forged or copied mark skips only the lookup: the handler runs again, never
    less (at-least-once).
    """

    def __init__(
        self, subscription: Subscription, reporter: StatusReporter, observer: DeliveryObserver
    ) -> None:
        self._name = subscription.name
        self._reporter = reporter
        self._observer = observer

    async def __call__(self, judging: Judging) -> Verdict | None:
        event = judging.event
        mark = judging.first_copy_mark
        if mark is not None and self._reporter.first_copy(mark, event):
            self._observer.dedup_lookup(self._name, skipped=True)
            return None
        self._observer.dedup_lookup(self._name, skipped=False)
        # A replay's own key: it runs again once, however often its copies come.
        if not await self._reporter.succeeded_before(event, judging.status.subscription):
            return None
        _log.info("event already succeeded here; acked without running the handler")
        succeeded = judging.status(DeliveryState.SUCCEEDED, judging.attempts_before)
        return Verdict(Outcome.SKIPPED, status=succeeded)


class ValidatePayload:
    """A typed handler's data validated (consumers.payloads) and handed on as the validated
    value; data that does not validate is dead-lettered at once: it would not next time."""

    def __init__(self, adapter: pydantic.TypeAdapter[Any], settler: Settler) -> None:
        self._adapter = adapter
        self._settler = settler

    async def __call__(self, judging: Judging) -> Verdict | None:
        event = judging.event
        try:
            data = validate_data(self._adapter, event.data, event.raw_data)
        except pydantic.ValidationError as error:
            failure = Failure(INVALID_DATA_ERROR, describe_invalid_data(error), "")
            reason, attempts = DeadLetterReason.INVALID_DATA, judging.attempts_before
            return self._settler.dead_letter(
                judging.message,
                judging.headers,
                failure,
                attempts,
                reason=reason,
                status=judging.status(
                    DeliveryState.DEAD_LETTERED, attempts, failure, reason=reason
                ),
            )
        judging.event = dataclasses.replace(event, data=data)
        return None


class RunHandler:
    """The handler run as the retry policy and the delivery order say, and its verdict."""

    def __init__(
        self,
        subscription: Subscription,
        *,
        order: DeliveryOrder,
        settler: Settler,
        reporter: StatusReporter,
        observer: DeliveryObserver,
        tracer: HandlerTracer,
        pacer: Pacer,
    ) -> None:
        self._subscription = subscription
        self._order = order
        self._settler = settler
        self._reporter = reporter
        self._observer = observer
        self._tracer = tracer
        self._pace = pacer.pace

    async def __call__(self, judging: Judging) -> Verdict:
        result, held_passes = await self._run(judging)
        attempts = judging.attempts_before + result.attempts
        status = judging.status
        if result.failure is None:
            return Verdict(Outcome.ACKED, status=status(DeliveryState.SUCCEEDED, attempts))
        if held_passes is None:
            # A shutdown came before its handler started, or (ordered) a shutdown or a lost
            # channel came during its retries: it goes back unsettled (ordered: in order).
            return Verdict(Outcome.RETURNED)
        retries = judging.retries + held_passes
        if (
            result.permanent
            or not self._order.uses_ladder
            or (delay := self._subscription.retry.next_delay(retries)) is None
        ):
            reason = (
                DeadLetterReason.permanent(result.failure)
                if result.permanent
                else DeadLetterReason.RETRIES_EXHAUSTED
            )
            return self._settler.dead_letter(
                judging.message,
                judging.headers,
                result.failure,
                attempts,
                reason=reason,
                status=status(DeliveryState.DEAD_LETTERED, attempts, result.failure, reason=reason),
            )
        return self._settler.retry_later(
            judging.message,
            judging.headers,
            result.failure,
            attempts,
            retries=retries,
            delay=delay,
            status=status,
        )

    async def _run(self, judging: Judging) -> tuple[AttemptsResult, int | None]:
        event, attempts_before = judging.event, judging.attempts_before
        traceparent = judging.headers.get(TRACEPARENT_HEADER)
        async with self._order.handler_slot():
            # The wait for a rate limit's token holds the slot: it counts toward concurrency.
            if (self._pace is not None and not await self._pace()) or not self._order.may_start():
                return _NOT_STARTED, None
            self._reporter.note(judging.status(DeliveryState.PROCESSING, attempts_before + 1))
            started = time.perf_counter()
            name = self._subscription.name
            with self._tracer.handling(
                name, event.id, event.type, traceparent if isinstance(traceparent, str) else None
            ) as mark_failed:
                result, held_passes = await self._order.attempts(
                    event, judging.status, attempts_before, self._pace
                )
                if result.failure is not None:
                    mark_failed(result.failure.error_class, result.failure.message)
            self._observer.handler_ran(name, time.perf_counter() - started)
            return result, held_passes


class Report:
    """What became of a settled delivery, told to the observer (metrics, recent failures)."""

    def __init__(self, subscription: Subscription, observer: DeliveryObserver) -> None:
        self._name = subscription.name
        self._observer = observer

    def __call__(self, outcome: Outcome, done: Verdict) -> None:
        self._observer.delivery_settled(self._name, outcome.value)
        if outcome is Outcome.FILTERED:
            self._observer.event_filtered(self._name)
        status = done.status
        if outcome is done.outcome and status is not None and status.failure is not None:
            report = FailureReport(
                event_id=status.event_id,
                event_type=status.attributes.get("type", ""),
                error_class=status.failure.error_class,
                error_message=status.failure.message,
                outcome=outcome.value,
                at=status.at,
            )
            self._observer.failure_seen(self._name, report)
        if outcome is Outcome.RETRY_SCHEDULED and done.move and done.move.tier:
            self._observer.retry_scheduled(self._name, done.move.tier)
