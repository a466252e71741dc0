"""Ordered or unordered: how a subscription's deliveries are admitted and released.

Chosen once per subscription (`delivery_order`); the pipeline (consumers.pipeline) and the
settler (consumers.settling) ask it the few questions on which the two differ.

`Unordered` takes each delivery as it comes, on consumers.delivery's fast path, bounds only the
handlers running by the subscription's concurrency, gives back with a nack, and retries through
the broker-side ladder.

`Ordered` (consumers.ordering) runs one key's events one at a time. Its key lanes and the tasks
running its handlers belong to the subscription, not to the channel: aiormq cancels a channel's
delivery tasks when the channel closes, but a handler may outlive that (a thread, a shielded
call), and the broker hands its event back at once. So the handler runs on in a task of our own,
holding its key, and the redelivery (with the later events of the key) waits behind it; the lost
ack costs a duplicate, never a reordering. It never gives a delivery back with a nack (see
consumers.settling), retries in process holding the key, and its consumers are not cancelled at
shutdown: a basic.cancel hands a single-active-consumer queue to the next consumer while this one
still holds deliveries.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol, cast

import aiormq
import structlog

from consumers.attempts import AttemptsResult, run_attempts
from consumers.dead_letter import Failure
from consumers.deadlines import SharedTimeout
from consumers.delivery import Delivery, DeliveryHook, Inbound
from consumers.event import Event, Handler
from consumers.ordering import (
    LOOP_RETRY_CLOCK,
    MAX_HOLD_SECONDS,
    HandlerSlot,
    HeldDelivery,
    KeyLanes,
    Ordering,
    RetryClock,
    run_holding_key,
)
from consumers.pacing import Pace
from consumers.reporting import StatusOf, StatusReporter
from consumers.settling import Outcome, Release, channel_gone
from consumers.status import DeliveryState
from consumers.subscription import Subscription
from producers.publisher import BROKER_FAILURES

__all__ = ["Attempts", "DeliveryOrder", "Handle", "Ordered", "Unordered", "delivery_order"]

_log = structlog.get_logger(component="consumer")
_LANE_GRACE_SECONDS = 5.0
# An ordered delivery whose judging failed unexpectedly is judged again in place (its key
# waits: a store that went away comes back), this many times in all, then dead-lettered.
_ORDERED_JUDGE_TRIES = 3

Handle = Callable[[Inbound], Coroutine[Any, Any, None]]
# The handler's attempts: their result, and the retry waits made in process (None: interrupted
# by a shutdown or a lost channel; nothing to settle).
Attempts = tuple[AttemptsResult, int | None]


class DeliveryOrder(Release, Protocol):
    """What differs between an ordered and an unordered subscription (with how it lets go of a
    delivery, consumers.settling's `Release`)."""

    holding: int  # deliveries received and not yet settled
    cancel_at_drain: bool  # stop the broker-side consumers when a shutdown begins
    uses_ladder: bool  # retries go through the broker's retry tiers

    def take_over(self, channel: aiormq.abc.AbstractChannel, deliver: Handle) -> None:
        """The consumer's channel is open: take its deliveries the fastest safe way."""

    async def admit(self, message: Inbound, handle: Handle) -> None:
        """Run `handle(message)` when the delivery's turn comes."""

    def handler_slot(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """Held while the handler runs: bounds the handlers running at once."""

    def may_start(self) -> bool:
        """Whether a delivery that got a handler slot may still start its handler."""

    async def attempts(
        self, event: Event, status: StatusOf, attempts_before: int, pace: Pace | None
    ) -> Attempts:
        """Run the handler as the retry policy says, each attempt after the first once `pace()`
        allows it."""

    def after_failed_judging(self, message: Inbound, tries: int) -> Outcome | None:
        """What a delivery whose judging failed unexpectedly `tries` times comes to: RETURNED,
        DEAD_LETTERED, or None to judge it again."""

    async def drain(self) -> None:
        """After the running handlers ended or were cancelled: let the admitted rest go."""


class Unordered:
    """Deliveries handled as they come; only the handlers running are bounded."""

    cancel_at_drain = True
    uses_ladder = True

    def __init__(
        self,
        subscription: Subscription,
        *,
        handler: Handler,
        consumer_tags: Sequence[str],
        stopping: asyncio.Event,
        clock: RetryClock = LOOP_RETRY_CLOCK,
    ) -> None:
        self._subscription = subscription
        self._handler = handler
        self._tags = consumer_tags
        self._stopping = stopping
        self._clock = clock
        self._slots = asyncio.Semaphore(subscription.concurrency)
        self._timeout = SharedTimeout(subscription.timeout)  # one timer for all attempts
        self._hook: DeliveryHook | None = None
        self.holding = 0

    def take_over(self, channel: aiormq.abc.AbstractChannel, deliver: Handle) -> None:
        # Skips aio-pika's per-delivery machinery (consumers.delivery).
        if self._hook is None:
            self._hook = DeliveryHook(self._tags, deliver, name=self._subscription.name)
        self._hook.hook(channel)

    async def admit(self, message: Inbound, handle: Handle) -> None:
        if self._hook is not None and not isinstance(message, Delivery):
            # The first deliveries on a channel a reconnect restored: take the next ones.
            with contextlib.suppress(*BROKER_FAILURES):
                self._hook.hook(message.channel)
        self.holding += 1
        try:
            # The slot bounds the handlers running; the lookup before and the settling after go
            # on beside them, within the prefetch.
            await handle(message)
        finally:
            self.holding -= 1

    def handler_slot(self) -> contextlib.AbstractAsyncContextManager[Any]:
        return self._slots

    def may_start(self) -> bool:
        return not self._stopping.is_set()

    async def attempts(
        self,
        event: Event,
        status: StatusOf,  # noqa: ARG002 - the protocol's; the ladder reports retries
        attempts_before: int,  # noqa: ARG002 - the protocol's
        pace: Pace | None,
    ) -> Attempts:
        result = await run_attempts(
            self._handler,
            event,
            policy=self._subscription.retry,
            timeout=self._timeout,
            keep_trying=lambda: not self._stopping.is_set(),
            pace=pace,
            sleep=self._clock.sleep,
        )
        return result, 0

    def after_failed_judging(self, message: Inbound, tries: int) -> Outcome | None:  # noqa: ARG002 - the protocol's
        # Returned, it comes back until the queue's delivery limit dead-letters it.
        return Outcome.RETURNED

    def settle_again(self, message: Inbound) -> bool:  # noqa: ARG002 - the protocol's
        return False  # given back with a nack; its redelivery is settled again

    async def give_back(self, message: Inbound) -> bool:
        await message.nack(requeue=True)
        return True

    async def drain(self) -> None:
        return


class Ordered:
    """One key's deliveries one at a time, in delivery order; retries hold the key."""

    cancel_at_drain = False
    uses_ladder = False

    def __init__(
        self,
        subscription: Subscription,
        ordering: Ordering,
        *,
        handler: Handler,
        reporter: StatusReporter,
        stopping: asyncio.Event,
        clock: RetryClock = LOOP_RETRY_CLOCK,
    ) -> None:
        self._subscription = subscription
        self._ordering = ordering
        self._clock = clock
        self._handler = handler
        self._reporter = reporter
        self._stopping = stopping
        self._slots = asyncio.Semaphore(subscription.concurrency)
        self._timeout = SharedTimeout(subscription.timeout)
        self._lanes = KeyLanes()
        self._in_lanes: set[asyncio.Task[None]] = set()
        self._holds: dict[asyncio.Task[Any], HeldDelivery] = {}  # by the task handling it
        self.holding = 0

    def take_over(self, channel: aiormq.abc.AbstractChannel, deliver: Handle) -> None:  # noqa: ARG002 - the protocol's
        # While a channel is being switched, a delivery on the fast path could overtake one
        # still on aio-pika's: an ordered subscription stays on aio-pika's.
        return

    async def admit(self, message: Inbound, handle: Handle) -> None:
        # Joined before the first await: the lane's order is the delivery order.
        turn = self._lanes.join(self._ordering.key_of(message.headers))
        received = self._clock.now()
        in_lane = asyncio.create_task(self._take_turn(turn, message, received, handle))
        self._in_lanes.add(in_lane)
        in_lane.add_done_callback(self._in_lanes.discard)
        # Shielded: aiormq cancels this task when the channel closes; the handler runs on.
        await asyncio.shield(in_lane)

    async def _take_turn(
        self,
        turn: contextlib.AbstractAsyncContextManager[None],
        message: Inbound,
        received: float,
        handle: Handle,
    ) -> None:
        self.holding += 1
        try:
            async with turn:
                if channel_gone(message):
                    return  # the broker has it back and redelivers it, in order, behind us
                slot = HandlerSlot(self._slots)
                async with slot:
                    if not self._stopping.is_set() and channel_gone(message):
                        return  # lost while waiting for a slot: its redelivery waits behind us
                    task = cast("asyncio.Task[Any]", asyncio.current_task())
                    self._holds[task] = HeldDelivery(message, slot, received)
                    try:
                        await handle(message)
                    finally:
                        self._holds.pop(task, None)
        finally:
            self.holding -= 1

    def handler_slot(self) -> contextlib.AbstractAsyncContextManager[Any]:
        return contextlib.nullcontext()  # the delivery holds its slot from its turn on

    def may_start(self) -> bool:
        return True  # admitted after the drain began, it is not judged at all

    async def attempts(
        self, event: Event, status: StatusOf, attempts_before: int, pace: Pace | None
    ) -> Attempts:
        holding = self._holds[cast("asyncio.Task[Any]", asyncio.current_task())]

        def keep_going() -> bool:
            return not self._stopping.is_set() and not channel_gone(holding.message)

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
            return await self._clock.wait(holding, delay, self._stopping)

        held = await run_holding_key(
            self._handler,
            event,
            policy=self._subscription.retry,
            timeout=self._timeout,
            settle_by=holding.received + MAX_HOLD_SECONDS,
            keep_going=keep_going,
            wait=wait,
            pace=pace,
            clock=self._clock,
        )
        return held.result, None if held.interrupted else held.passes

    def after_failed_judging(self, message: Inbound, tries: int) -> Outcome | None:
        # It cannot be returned while its channel lives (the later events of its key would
        # overtake it): judged again holding the key, then dead-lettered.
        if channel_gone(message) or self._stopping.is_set():
            return Outcome.RETURNED
        return Outcome.DEAD_LETTERED if tries >= _ORDERED_JUDGE_TRIES else None

    def settle_again(self, message: Inbound) -> bool:
        # The key waits here until its event is settled (a nack would let later events of the
        # key overtake it).
        return not self._stopping.is_set() and not channel_gone(message)

    async def give_back(self, message: Inbound) -> bool:  # noqa: ARG002 - the protocol's
        return False  # left unsettled; it goes back, in order, when the channel closes

    async def drain(self) -> None:
        # Deliveries still in their lanes find the drain on their turn and stay unsettled; the
        # ones behind a handler that will not end are cancelled.
        if self._in_lanes:
            _, stuck = await asyncio.wait(set(self._in_lanes), timeout=_LANE_GRACE_SECONDS)
            for task in stuck:
                task.cancel()


def delivery_order(
    subscription: Subscription,
    *,
    handler: Handler,
    consumer_tags: Sequence[str],
    reporter: StatusReporter,
    stopping: asyncio.Event,
    retry_clock: RetryClock = LOOP_RETRY_CLOCK,
) -> DeliveryOrder:
    """The strategy for `subscription`: ordered when it has an `ordering`; its retries wait on
    `retry_clock`."""
    if subscription.ordering is None:
        return Unordered(
            subscription,
            handler=handler,
            consumer_tags=consumer_tags,
            stopping=stopping,
            clock=retry_clock,
        )
    return Ordered(
        subscription,
        subscription.ordering,
        handler=handler,
        reporter=reporter,
        stopping=stopping,
        clock=retry_clock,
    )
