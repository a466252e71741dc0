"""The stages a delivery passes through in consumers.pipeline, and what they hand each other."""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Protocol

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
from consumers.observe import DeliveryObserver, FailureReport, HandlerTracer
from consumers.reporting import StatusOf, StatusReporter, malformed_status
from consumers.settling import Outcome, Settler, Verdict
from consumers.status import DeliveryState
from consumers.subscription import Subscription
from producers.wire import TRACEPARENT_HEADER

__all__ = ["Decode", "Judging", "Report", "RunHandler", "SkipSucceeded", "Stage"]

_log = structlog.get_logger(component="consumer")
# What a delivery taken by a shutdown before its handler started comes to: returned, unhandled.
MAX_REPLAY_ID_LENGTH = 64
_NOT_STARTED = AttemptsResult(0, Failure("ShutdownError", "the consumer is shutting down", ""))


@dataclass(slots=True)
class Judging:
    """One decoded delivery on its way through the stages."""

    message: Inbound
    headers: dict[str, Any]  # the message's, minus conveyor's own unless it came from our ladder
    event: Event
    status: StatusOf  # builds this event's status updates
    attempts_before: int  # handler attempts made in earlier deliveries
    retries: int  # passes through the retry ladder so far


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
        # A retry tier dead-letters through the default exchange with our queue as routing key;
        # an archive replay comes that way too, or through an ordered subscription's exchange.
        if not (
            (message.exchange == "" and message.routing_key in self._queues)
            or (self._own_exchange is not None and message.exchange == self._own_exchange)
        ):
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
        return Judging(message, headers, event, status, attempts_before, read_int(headers, RETRIES))


def replay_id(headers: dict[str, Any]) -> str | None:
    """The archive replay this message belongs to, if it is one (an id of at most 64 bytes)."""
    value = headers.get(REPLAY)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str) and 0 < len(value) <= MAX_REPLAY_ID_LENGTH:
        return value
    return None


class SkipSucceeded:
    """Deduplication: an event that already succeeded here is acked without its handler."""

    def __init__(self, reporter: StatusReporter) -> None:
        self._reporter = reporter

    async def __call__(self, judging: Judging) -> Verdict | None:
        # A replay's own key: it runs again once, however often its copies come.
        if not await self._reporter.succeeded_before(judging.event, judging.status.subscription):
            return None
        _log.info("event already succeeded here; acked without running the handler")
        succeeded = judging.status(DeliveryState.SUCCEEDED, judging.attempts_before)
        return Verdict(Outcome.SKIPPED, status=succeeded)


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
    ) -> None:
        self._subscription = subscription
        self._order = order
        self._settler = settler
        self._reporter = reporter
        self._observer = observer
        self._tracer = tracer

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
                DeadLetterReason.PERMANENT
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
            if not self._order.may_start():
                return _NOT_STARTED, None
            self._reporter.note(judging.status(DeliveryState.PROCESSING, attempts_before + 1))
            started = time.perf_counter()
            name = self._subscription.name
            with self._tracer.handling(
                name, event.id, event.type, traceparent if isinstance(traceparent, str) else None
            ) as mark_failed:
                result, held_passes = await self._order.attempts(
                    event, judging.status, attempts_before
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
