"""The consumer runtime: deliveries of one subscription handed to its handler, bounded in parallel.

One place maps a delivery's outcome to what happens on the broker (`_settle`). Nothing is acked
before its handler returned or a confirmed copy sits in the retry tier or the dead-letter queue;
whatever is unsettled when the channel closes goes back to the queue, so a crash or shutdown
yields a redelivery, never a loss.

An ordered subscription (consumers.ordering) consumes its partition queues and runs one key's
events one at a time. It never gives a delivery back with a nack: measured on RabbitMQ 3.10.8, a
quorum queue redelivers nacked messages in nack order, ahead of the rest, while later events of
that key may already be held here; and a basic.cancel hands a single-active-consumer queue to
the next consumer while this one still holds deliveries. Unsettled deliveries instead go back
when the channel closes, which a quorum queue does in their original order, at the head.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
import uuid
from dataclasses import dataclass
from typing import Any, cast

import aiormq.exceptions
import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from aio_pika.exceptions import ChannelInvalidStateError

from consumers.attempts import AttemptsResult, run_attempts
from consumers.dead_letter import (
    ATTEMPTS,
    REPLAYS,
    RETRIES,
    DeadLetterReason,
    Failure,
    failure_headers,
    read_int,
    without_conveyor_headers,
)
from consumers.decoding import MalformedEventError, decode_event
from consumers.event import Event
from consumers.moves import MessageMover, MoveFailedError
from consumers.observe import (
    NO_DELIVERY_OBSERVER,
    NO_HANDLER_TRACER,
    DeliveryObserver,
    FailureReport,
    HandlerTracer,
)
from consumers.ordering import KeyLanes, run_holding_key
from consumers.reporting import StatusOf, StatusReporter
from consumers.retry import delay_label
from consumers.status import DeliveryState, DeliveryUpdate, StatusLedger
from consumers.subscription import Subscription
from producers import BROKER_FAILURES, TRACEPARENT_HEADER, Topology

__all__ = ["Outcome", "SubscriptionConsumer"]

_log = structlog.get_logger(component="consumer")
_CANCEL_GRACE_SECONDS = 5.0
_MOVE_RETRY_PAUSE_SECONDS = 1.0
_UNREACHABLE: tuple[type[Exception], ...] = (*BROKER_FAILURES, TimeoutError)


class Outcome(enum.StrEnum):
    """What happened to one delivery."""

    ACKED = "acked"  # the handler returned
    RETRY_SCHEDULED = "retry-scheduled"  # a copy waits in a retry tier
    DEAD_LETTERED = "dead-lettered"  # a copy sits in {ns}.{subscription}.dlq
    RETURNED = "returned"  # back to the queue untouched (shutdown, or a move that failed)
    SKIPPED = "skipped"  # acked without running the handler: it already succeeded here


@dataclass(frozen=True, slots=True)
class _Move:
    """Where a copy of the delivery goes, and with which headers."""

    exchange: str
    routing_key: str
    headers: dict[str, Any]
    tier: str | None = None  # the retry tier's delay label, for a move into the ladder


@dataclass(frozen=True, slots=True)
class _Verdict:
    outcome: Outcome
    move: _Move | None = None  # for RETRY_SCHEDULED and DEAD_LETTERED
    status: DeliveryUpdate | None = None  # what to record (and announce, when terminal)


class SubscriptionConsumer:
    """Consumes `{ns}.{subscription}` on its own channel with the subscription's prefetch."""

    def __init__(
        self,
        subscription: Subscription,
        *,
        topology: Topology,
        channel: AbstractChannel,
        queues: tuple[AbstractQueue, ...],
        mover: MessageMover,
        ledger: StatusLedger,
        observer: DeliveryObserver = NO_DELIVERY_OBSERVER,
        tracer: HandlerTracer = NO_HANDLER_TRACER,
    ) -> None:
        self.subscription = subscription
        self._topology = topology
        self._channel = channel
        self._queues = queues
        self._mover = mover
        self._observer = observer
        self._tracer = tracer
        self._reporter = StatusReporter(subscription, ledger=ledger, mover=mover, topology=topology)
        self._slots = asyncio.Semaphore(subscription.concurrency)
        self._draining = False
        self._stop = asyncio.Event()  # set with _draining: wakes retry waits of ordered events
        self._lanes = KeyLanes()
        self._running: set[asyncio.Task[object]] = set()
        tag = f"conveyor.{subscription.name}.{uuid.uuid4().hex[:12]}"
        # One consumer per queue (an ordered subscription has one per partition).
        self._consumer_tags = (
            [tag] if len(queues) == 1 else [f"{tag}.p{i}" for i in range(len(queues))]
        )
        self._consuming = False
        self._holding = 0  # deliveries received and not yet settled

    async def start(self) -> None:
        # Per consumer, so an ordered subscription holds up to `prefetch` per partition.
        await self._channel.set_qos(prefetch_count=self.subscription.prefetch)
        for queue, tag in zip(self._queues, self._consumer_tags, strict=True):
            await queue.consume(self._on_message, consumer_tag=tag)
        self._consuming = True

    async def attached(self) -> bool:
        """True when the broker-side consumer exists on a live channel (for /readyz)."""
        if not self._consuming or self._draining or self._channel.is_closed:
            return False
        try:
            async with asyncio.timeout(0.5):
                underlay = cast("aiormq.Channel", await self._channel.get_underlay_channel())
        except _UNREACHABLE:
            return False
        return all(tag in underlay.consumers for tag in self._consumer_tags)

    async def drain(self, timeout: float) -> None:
        """Stop taking deliveries, give running handlers `timeout` seconds, then cancel them.

        Deliveries not yet started are requeued; cancelled ones go back when the channel closes.
        """
        self._draining = True
        self._stop.set()
        if self._consuming and self.subscription.ordering is None:
            with contextlib.suppress(TimeoutError, *BROKER_FAILURES):
                async with asyncio.timeout(min(timeout, 5.0)):
                    for queue, tag in zip(self._queues, self._consumer_tags, strict=True):
                        await queue.cancel(tag)
        self._consuming = False
        running = set(self._running)
        if not running:
            return
        _, unfinished = await asyncio.wait(running, timeout=timeout)
        for task in unfinished:
            task.cancel()
        if unfinished:
            _log.warning(
                "handlers cancelled at shutdown; their events return to the queue",
                subscription=self.subscription.name,
                cancelled=len(unfinished),
            )
            # A handler that swallows cancellation must not hold the process: closing the
            # channel returns its delivery anyway.
            await asyncio.wait(unfinished, timeout=_CANCEL_GRACE_SECONDS)

    @property
    def unacked(self) -> int:
        """Deliveries this consumer holds: waiting for a handler slot or being handled."""
        return self._holding

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        # aiormq runs each delivery in its own task; prefetch bounds how many exist, and the
        # semaphore bounds how many run a handler.
        self._holding += 1
        try:
            ordering = self.subscription.ordering
            if ordering is None:
                await self._handle_delivery(message)
                return
            # Joined before the first await: the lane's order is the delivery order.
            async with self._lanes.join(ordering.key_of(message.headers)):
                if self._stale(message):
                    return  # its channel closed: the broker gives it back, in order
                await self._handle_delivery(message)
        finally:
            self._holding -= 1

    @staticmethod
    def _stale(message: AbstractIncomingMessage) -> bool:
        try:
            _ = message.channel
        except ChannelInvalidStateError:
            return True
        return False

    async def _handle_delivery(self, message: AbstractIncomingMessage) -> None:
        async with self._slots:
            if self._draining:
                await self._settle(message, _Verdict(Outcome.RETURNED))
                return
            task = asyncio.current_task()
            if task is not None:
                self._running.add(task)
            try:
                with structlog.contextvars.bound_contextvars(
                    subscription=self.subscription.name,
                    event_id=message.message_id,
                    event_type=message.routing_key,
                    correlation_id=message.correlation_id,
                ):
                    await self._settle(message, await self._judge_safely(message))
            finally:
                if task is not None:
                    self._running.discard(task)

    async def _judge_safely(self, message: AbstractIncomingMessage) -> _Verdict:
        try:
            return await self._judge(message)
        except Exception:  # noqa: BLE001 - an exception here would leave the delivery unsettled
            # Unsettled, it would hold a prefetch slot until the channel closes: a few such
            # messages wedge the consumer. Returned, it comes back until the queue's delivery
            # limit dead-letters it.
            _log.exception("judging a delivery failed unexpectedly; returning it to its queue")
            await asyncio.sleep(_MOVE_RETRY_PAUSE_SECONDS)
            return _Verdict(Outcome.RETURNED)

    async def _judge(self, message: AbstractIncomingMessage) -> _Verdict:
        """Run the handler and decide the delivery's fate; no broker I/O here."""
        headers: dict[str, Any] = dict(message.headers or {})
        if not self._from_own_ladder(message):
            # Counters are ours only when we wrote them: a fresh publish (or a replay from the
            # DLQ) that carries x-conveyor-* headers starts from the first attempt again.
            headers = without_conveyor_headers(headers)
        attempts_before = read_int(headers, ATTEMPTS)
        retries = read_int(headers, RETRIES)
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
            # No trustworthy identity, so no status record: the DLQ entry says why. An error
            # other than MalformedEventError is a decoding bug the message found; retrying
            # cannot help, and its class in the DLQ entry shows it.
            failure = (
                Failure("MalformedEventError", str(error), "")
                if isinstance(error, MalformedEventError)
                else Failure.from_exception(error)
            )
            return self._dead_letter(
                message, headers, failure, attempts_before, reason=DeadLetterReason.MALFORMED
            )
        structlog.contextvars.bind_contextvars(event_id=event.id, event_type=event.type)
        status = StatusOf(event, self.subscription.name, read_int(headers, REPLAYS))
        if self.subscription.deduplicate and await self._reporter.succeeded_before(event):
            _log.info("event already succeeded here; acked without running the handler")
            return _Verdict(
                Outcome.SKIPPED, status=status(DeliveryState.SUCCEEDED, attempts_before)
            )
        self._reporter.note(status(DeliveryState.PROCESSING, attempts_before + 1))
        started = time.perf_counter()
        traceparent = headers.get(TRACEPARENT_HEADER)
        with self._tracer.handling(
            self.subscription.name,
            event.id,
            event.type,
            traceparent if isinstance(traceparent, str) else None,
        ) as mark_failed:
            result, held_passes = await self._attempts(event, status, attempts_before)
            if result.failure is not None:
                mark_failed(result.failure.error_class, result.failure.message)
        self._observer.handler_ran(self.subscription.name, time.perf_counter() - started)
        attempts = attempts_before + result.attempts
        if result.failure is None:
            return _Verdict(Outcome.ACKED, status=status(DeliveryState.SUCCEEDED, attempts))
        if held_passes is None:
            # Ordered, and a shutdown came during its retries: it goes back unsettled, in order.
            return _Verdict(Outcome.RETURNED)
        retries += held_passes
        if (
            result.permanent
            or self.subscription.ordering is not None
            or (delay := self.subscription.retry.next_delay(retries)) is None
        ):
            reason = (
                DeadLetterReason.PERMANENT
                if result.permanent
                else DeadLetterReason.RETRIES_EXHAUSTED
            )
            return self._dead_letter(
                message,
                headers,
                result.failure,
                attempts,
                reason=reason,
                status=status(DeliveryState.DEAD_LETTERED, attempts, result.failure, reason=reason),
            )
        _log.warning(
            "handler failed; retry scheduled",
            attempt=attempts,
            retry_in=delay,
            error_class=result.failure.error_class,
            error=result.failure.message,
        )
        copy_headers = failure_headers(
            headers,
            failure=result.failure,
            attempts=attempts,
            exchange=message.exchange or "",
            routing_key=message.routing_key or "",
            retries=retries + 1,
        )
        # The default exchange routes straight to the tier queue named as the routing key.
        label = delay_label(delay)
        tier = self._topology.retry_queue(self.subscription.name, label)
        retrying = status(DeliveryState.RETRYING, attempts, result.failure, next_attempt_in=delay)
        return _Verdict(Outcome.RETRY_SCHEDULED, _Move("", tier, copy_headers, label), retrying)

    async def _attempts(
        self, event: Event, status: StatusOf, attempts_before: int
    ) -> tuple[AttemptsResult, int | None]:
        """Run the handler as the retry policy says: the result, and the retry waits made in
        process (None: interrupted by a shutdown; the delivery must go back)."""
        if self.subscription.ordering is None:
            result = await run_attempts(
                self.subscription.handler,
                event,
                policy=self.subscription.retry,
                timeout=self.subscription.timeout,
                keep_trying=lambda: not self._draining,
            )
            return result, 0

        async def waiting(attempts: int, failure: Failure, delay: float) -> None:
            _log.warning(
                "handler failed; retry in process, later events of this key wait",
                attempt=attempts_before + attempts,
                retry_in=delay,
                error_class=failure.error_class,
                error=failure.message,
            )
            retrying = status(
                DeliveryState.RETRYING, attempts_before + attempts, failure, next_attempt_in=delay
            )
            await self._reporter.report(retrying, correlation_id=event.correlation_id, record=True)

        held = await run_holding_key(
            self.subscription.handler,
            event,
            policy=self.subscription.retry,
            timeout=self.subscription.timeout,
            stop=self._stop,
            on_wait=waiting,
        )
        return held.result, None if held.interrupted else held.passes

    def _from_own_ladder(self, message: AbstractIncomingMessage) -> bool:
        # A retry tier dead-letters through the default exchange with our queue as routing key.
        return message.exchange == "" and message.routing_key in {q.name for q in self._queues}

    def _dead_letter(
        self,
        message: AbstractIncomingMessage,
        headers: dict[str, Any],
        failure: Failure,
        attempts: int,
        *,
        reason: DeadLetterReason,
        status: DeliveryUpdate | None = None,
    ) -> _Verdict:
        _log.error(
            "event dead-lettered",
            reason=reason.value,
            attempt=attempts,
            error_class=failure.error_class,
            error=failure.message,
        )
        copy_headers = failure_headers(
            headers,
            failure=failure,
            attempts=attempts,
            exchange=message.exchange or "",
            routing_key=message.routing_key or "",
            reason=reason,
        )
        move = _Move(self._topology.dead_letter_exchange, self.subscription.name, copy_headers)
        return _Verdict(Outcome.DEAD_LETTERED, move, status)

    async def _settle(self, message: AbstractIncomingMessage, verdict: _Verdict) -> None:
        outcome = await self._carry_out(message, verdict)
        while (
            outcome is Outcome.RETURNED
            and verdict.outcome is not Outcome.RETURNED
            and self.subscription.ordering is not None
            and not self._draining
            and not self._stale(message)
        ):
            # Ordered: the key waits here until its event is settled (a nack would let later
            # events of the key overtake it).
            await asyncio.sleep(_MOVE_RETRY_PAUSE_SECONDS)
            outcome = await self._carry_out(message, verdict)
        self._observer.delivery_settled(self.subscription.name, outcome.value)
        status = verdict.status
        if outcome is verdict.outcome and status is not None and status.failure is not None:
            report = FailureReport(
                event_id=status.event_id,
                event_type=status.attributes.get("type", ""),
                error_class=status.failure.error_class,
                error_message=status.failure.message,
                outcome=outcome.value,
                at=status.at,
            )
            self._observer.failure_seen(self.subscription.name, report)
        if outcome is Outcome.RETRY_SCHEDULED and verdict.move and verdict.move.tier:
            self._observer.retry_scheduled(self.subscription.name, verdict.move.tier)

    async def _carry_out(self, message: AbstractIncomingMessage, verdict: _Verdict) -> Outcome:
        """Settle the delivery as `verdict` says; return what actually happened to it."""
        outcome = verdict.outcome
        try:
            if verdict.move is not None:
                try:
                    await self._mover.copy(
                        message,
                        exchange=verdict.move.exchange,
                        routing_key=verdict.move.routing_key,
                        headers=verdict.move.headers,
                    )
                except MoveFailedError as error:
                    # The copy is not safe yet: leave the original in the queue to come back,
                    # after a pause so a broker in trouble is not hammered with redeliveries.
                    _log.warning("could not move event; it stays queued", error=str(error))
                    outcome = Outcome.RETURNED
                    await asyncio.sleep(_MOVE_RETRY_PAUSE_SECONDS)
            if outcome is not Outcome.RETURNED and verdict.status is not None:
                announced = await self._reporter.report(
                    verdict.status,
                    correlation_id=message.correlation_id,
                    record=outcome is not Outcome.SKIPPED,
                )
                if not announced:
                    outcome = Outcome.RETURNED
                    await asyncio.sleep(_MOVE_RETRY_PAUSE_SECONDS)
            if outcome is Outcome.RETURNED:
                await self._give_back(message)
            else:
                await message.ack()
        except BROKER_FAILURES as error:
            # The channel is gone: the broker requeues the unsettled delivery by itself.
            _log.warning(
                "could not settle delivery; the broker will redeliver it",
                outcome=outcome.value,
                error_class=type(error).__name__,
            )
            return Outcome.RETURNED
        except Exception:  # noqa: BLE001 - a delivery must never stay unsettled on a live channel
            _log.exception("settling failed unexpectedly; returning the event to its queue")
            with contextlib.suppress(*BROKER_FAILURES):
                await self._give_back(message)
            return Outcome.RETURNED
        if outcome is Outcome.ACKED:
            _log.debug("event handled")
        return outcome

    async def _give_back(self, message: AbstractIncomingMessage) -> None:
        if self.subscription.ordering is None:
            await message.nack(requeue=True)
        # Ordered: left unsettled; it goes back, in order, when the channel closes.
