"""The consumer runtime: deliveries of one subscription handed to its handler, bounded in parallel.

Each delivery is judged here (`_judge`: decode, deduplicate, run the handler as the retry policy
says) into a verdict that consumers.settling carries out on the broker.

An ordered subscription (consumers.ordering) consumes its partition queues and runs one key's
events one at a time. Its key lanes and the tasks running its handlers belong to the
subscription, not to the channel: aiormq cancels a channel's delivery tasks when the channel
closes, but a handler may outlive that (a thread, a shielded call), and the broker hands its
event back at once. So the handler runs on in a task of our own, holding its key, and the
redelivery (with the later events of the key) waits behind it; the lost ack costs a duplicate,
never a reordering. Shutdown does not cancel an ordered consumer: a basic.cancel hands a
single-active-consumer queue to the next consumer while this one still holds deliveries.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any, cast

import aiormq.exceptions
import structlog
from aio_pika.abc import AbstractChannel, AbstractQueue

from consumers.attempts import AttemptsResult, run_attempts
from consumers.dead_letter import (
    ATTEMPTS,
    REPLAYS,
    RETRIES,
    DeadLetterReason,
    Failure,
    read_int,
    without_conveyor_headers,
)
from consumers.deadlines import SharedTimeout
from consumers.decoding import MalformedEventError, decode_event
from consumers.delivery import Delivery, DeliveryHook, Inbound
from consumers.event import Event
from consumers.moves import MessageMover
from consumers.observe import (
    NO_DELIVERY_OBSERVER,
    NO_HANDLER_TRACER,
    DeliveryObserver,
    HandlerTracer,
)
from consumers.ordering import (
    MAX_HOLD_SECONDS,
    HandlerSlot,
    HeldDelivery,
    KeyLanes,
    run_holding_key,
    wait_holding_key,
)
from consumers.reporting import StatusOf, StatusReporter, malformed_status
from consumers.settling import (
    SETTLE_RETRY_PAUSE_SECONDS,
    Outcome,
    Settler,
    Verdict,
    channel_gone,
)
from consumers.status import DeliveryState, StatusLedger
from consumers.subscription import Subscription
from consumers.watch import HandlerSteps, WatchedHandler
from producers import BROKER_FAILURES, TRACEPARENT_HEADER, Topology

__all__ = ["SubscriptionConsumer"]

_log = structlog.get_logger(component="consumer")
_CANCEL_GRACE_SECONDS = 5.0
# An ordered delivery whose judging failed unexpectedly is judged again in place (its key
# waits: a store that went away comes back), this many times in all, then dead-lettered.
_ORDERED_JUDGE_TRIES = 3
_UNREACHABLE: tuple[type[Exception], ...] = (*BROKER_FAILURES, TimeoutError)
# What a delivery taken by a shutdown before its handler started comes to: returned, unhandled.
_NOT_STARTED = AttemptsResult(0, Failure("ShutdownError", "the consumer is shutting down", ""))


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
        steps: HandlerSteps | None = None,
    ) -> None:
        self.subscription = subscription
        # The handler as it runs: its steps timed (for the loop-lag warning), its returns checked.
        self._handler = WatchedHandler(
            subscription.name,
            subscription.handler_path,
            subscription.handler,
            steps or HandlerSteps(),
        )
        self._topology = topology
        self._channel = channel
        self._queues = queues
        self._queue_names = frozenset(queue.name for queue in queues)
        self._observer = observer
        self._tracer = tracer
        self._reporter = StatusReporter(subscription, ledger=ledger, mover=mover, topology=topology)
        self._settler = Settler(
            subscription,
            topology=topology,
            mover=mover,
            reporter=self._reporter,
            observer=observer,
            draining=lambda: self._draining,
        )
        self._slots = asyncio.Semaphore(subscription.concurrency)
        self._handler_timeout = SharedTimeout(subscription.timeout)  # one timer for all attempts
        self._draining = False
        self._stop = asyncio.Event()  # set with _draining: wakes retry waits of ordered events
        # Ordered: the subscription's, so they outlive a channel (see the module docstring).
        self._lanes = KeyLanes()
        self._in_lanes: set[asyncio.Task[None]] = set()
        self._running: set[asyncio.Task[Any]] = set()
        self._holds: dict[asyncio.Task[Any], HeldDelivery] = {}  # by the task handling it
        tag = f"conveyor.{subscription.name}.{uuid.uuid4().hex[:12]}"
        # One consumer per queue (an ordered subscription has one per partition).
        self._consumer_tags = (
            [tag] if len(queues) == 1 else [f"{tag}.p{i}" for i in range(len(queues))]
        )
        self._consuming = False
        self._holding = 0  # deliveries received and not yet settled
        # Unordered deliveries skip aio-pika's per-delivery machinery (consumers.delivery).
        self._hook = (
            DeliveryHook(self._consumer_tags, self._on_message, name=subscription.name)
            if subscription.ordering is None
            else None
        )

    async def start(self) -> None:
        # Per consumer, so an ordered subscription holds up to `prefetch` per partition.
        await self._channel.set_qos(prefetch_count=self.subscription.prefetch)
        if self._hook is not None:
            self._hook.hook(await self._channel.get_underlay_channel())
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
        if running:
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
        # Ordered deliveries still in their lanes find the drain on their turn and stay
        # unsettled; the ones behind a handler that will not end are cancelled.
        if self._in_lanes:
            _, stuck = await asyncio.wait(set(self._in_lanes), timeout=_CANCEL_GRACE_SECONDS)
            for task in stuck:
                task.cancel()
        # Acks of finished deliveries go out before the channel closes (else: redeliveries).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_CANCEL_GRACE_SECONDS):
                await self._settler.acks.flush()

    @property
    def unacked(self) -> int:
        """Deliveries this consumer holds: waiting for a handler slot or being handled."""
        return self._holding

    async def _on_message(self, message: Inbound) -> None:
        # Each delivery runs in its own task (consumers.delivery's, or aiormq's and aio-pika's);
        # prefetch bounds how many exist, and the semaphore bounds how many run a handler.
        ordering = self.subscription.ordering
        if ordering is not None:
            # Joined before the first await: the lane's order is the delivery order.
            turn = self._lanes.join(ordering.key_of(message.headers))
            received = asyncio.get_running_loop().time()
            in_lane = asyncio.create_task(self._take_turn(turn, message, received))
            self._in_lanes.add(in_lane)
            in_lane.add_done_callback(self._in_lanes.discard)
            # Shielded: aiormq cancels this task when the channel closes; the handler runs on.
            await asyncio.shield(in_lane)
            return
        if self._hook is not None and not isinstance(message, Delivery):
            # The first deliveries on a channel a reconnect restored: take the next ones.
            with contextlib.suppress(*BROKER_FAILURES):
                self._hook.hook(message.channel)
        self._holding += 1
        try:
            await self._handle_delivery(message)
        finally:
            self._holding -= 1

    async def _take_turn(
        self,
        turn: contextlib.AbstractAsyncContextManager[None],
        message: Inbound,
        received: float,
    ) -> None:
        self._holding += 1
        try:
            async with turn:
                if channel_gone(message):
                    return  # the broker has it back and redelivers it, in order, behind us
                await self._handle_delivery(message, received)
        finally:
            self._holding -= 1

    async def _handle_delivery(self, message: Inbound, received: float | None = None) -> None:
        if received is None:
            # Unordered: the slot bounds the handlers running (`_judge`); the lookup before and
            # the settling after go on beside them, within the prefetch (issue 7).
            await self._handle(message, None)
            return
        slot = HandlerSlot(self._slots)
        async with slot:
            await self._handle(message, HeldDelivery(message, slot, received))

    async def _handle(self, message: Inbound, held: HeldDelivery | None) -> None:
        if self._draining:
            await self._settler.settle(message, Verdict(Outcome.RETURNED))
            return
        if held is not None and channel_gone(message):
            return  # lost while waiting for a slot: its redelivery waits behind us
        task = cast("asyncio.Task[Any]", asyncio.current_task())
        self._running.add(task)
        if held is not None:
            self._holds[task] = held
        # Bound and reset by token: `bound_contextvars` reads the whole context to save and
        # restore it, a few % of a delivery's time (issue 7).
        tokens = structlog.contextvars.bind_contextvars(
            subscription=self.subscription.name,
            event_id=message.message_id,
            event_type=message.routing_key,
            correlation_id=message.correlation_id,
        )
        try:
            await self._settler.settle(message, await self._judge_safely(message))
        finally:
            structlog.contextvars.reset_contextvars(**tokens)
            self._running.discard(task)
            self._holds.pop(task, None)

    async def _judge_safely(self, message: Inbound) -> Verdict:
        tries = 0
        while True:
            tries += 1
            try:
                return await self._judge(message)
            except Exception as error:  # noqa: BLE001 - else the delivery would stay unsettled
                # Unsettled, it would hold a prefetch slot until the channel closes: a few such
                # messages wedge the consumer. Returned, it comes back until the queue's
                # delivery limit dead-letters it.
                _log.exception("judging a delivery failed unexpectedly")
                await asyncio.sleep(SETTLE_RETRY_PAUSE_SECONDS)
                if self.subscription.ordering is None:
                    return Verdict(Outcome.RETURNED)
                # Ordered, it cannot be returned while its channel lives (the later events of
                # its key would overtake it): judged again holding the key, then dead-lettered.
                if channel_gone(message) or self._draining:
                    return Verdict(Outcome.RETURNED)
                if tries >= _ORDERED_JUDGE_TRIES:
                    headers = without_conveyor_headers(dict(message.headers or {}))
                    return self._settler.dead_letter(
                        message,
                        headers,
                        Failure.from_exception(error),
                        read_int(headers, ATTEMPTS),
                        reason=DeadLetterReason.PERMANENT,
                    )

    async def _judge(self, message: Inbound) -> Verdict:
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
                status=malformed_status(identity, self.subscription.name, replays, failure),
            )
        if event.id != message.message_id or event.type != message.routing_key:
            # Bound in `_handle` from the message's properties, which usually say the same.
            structlog.contextvars.bind_contextvars(event_id=event.id, event_type=event.type)
        status = StatusOf(event, self.subscription.name, read_int(headers, REPLAYS))
        if self.subscription.deduplicate and await self._reporter.succeeded_before(event):
            _log.info("event already succeeded here; acked without running the handler")
            return Verdict(Outcome.SKIPPED, status=status(DeliveryState.SUCCEEDED, attempts_before))
        traceparent = headers.get(TRACEPARENT_HEADER)
        result, held_passes = await self._run_handler(
            event, status, attempts_before, traceparent if isinstance(traceparent, str) else None
        )
        attempts = attempts_before + result.attempts
        if result.failure is None:
            return Verdict(Outcome.ACKED, status=status(DeliveryState.SUCCEEDED, attempts))
        if held_passes is None:
            # A shutdown came before its handler started, or (ordered) a shutdown or a lost
            # channel came during its retries: it goes back unsettled (ordered: in order).
            return Verdict(Outcome.RETURNED)
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
            return self._settler.dead_letter(
                message,
                headers,
                result.failure,
                attempts,
                reason=reason,
                status=status(DeliveryState.DEAD_LETTERED, attempts, result.failure, reason=reason),
            )
        return self._settler.retry_later(
            message, headers, result.failure, attempts, retries=retries, delay=delay, status=status
        )

    async def _run_handler(
        self, event: Event, status: StatusOf, attempts_before: int, traceparent: str | None
    ) -> tuple[AttemptsResult, int | None]:
        """`_attempts` in a handler slot (an ordered delivery holds one already)."""
        unordered = self.subscription.ordering is None
        async with self._slots if unordered else contextlib.nullcontext():
            if unordered and self._draining:
                return _NOT_STARTED, None
            self._reporter.note(status(DeliveryState.PROCESSING, attempts_before + 1))
            started = time.perf_counter()
            name = self.subscription.name
            with self._tracer.handling(name, event.id, event.type, traceparent) as mark_failed:
                result, held_passes = await self._attempts(event, status, attempts_before)
                if result.failure is not None:
                    mark_failed(result.failure.error_class, result.failure.message)
            self._observer.handler_ran(name, time.perf_counter() - started)
            return result, held_passes

    async def _attempts(
        self, event: Event, status: StatusOf, attempts_before: int
    ) -> tuple[AttemptsResult, int | None]:
        """Run the handler as the retry policy says: the result, and the retry waits made in
        process (None: interrupted by a shutdown or a lost channel; nothing to settle)."""
        if self.subscription.ordering is None:
            result = await run_attempts(
                self._handler,
                event,
                policy=self.subscription.retry,
                timeout=self._handler_timeout,
                keep_trying=lambda: not self._draining,
            )
            return result, 0

        holding = self._holds[cast("asyncio.Task[Any]", asyncio.current_task())]

        def keep_going() -> bool:
            return not self._draining and not channel_gone(holding.message)

        async def wait(attempts: int, failure: Failure, delay: float) -> bool:
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
            return await wait_holding_key(holding, delay, self._stop)

        held = await run_holding_key(
            self._handler,
            event,
            policy=self.subscription.retry,
            timeout=self._handler_timeout,
            settle_by=holding.received + MAX_HOLD_SECONDS,
            keep_going=keep_going,
            wait=wait,
        )
        return held.result, None if held.interrupted else held.passes

    def _from_own_ladder(self, message: Inbound) -> bool:
        # A retry tier dead-letters through the default exchange with our queue as routing key.
        return message.exchange == "" and message.routing_key in self._queue_names
