"""One delivery's way from the broker to its ack: explicit stages, each passed once.

    admit     consumers.delivery_order: when the delivery's turn comes (ordered: its key's turn)
    decode    stages.Decode: the message read into an Event (unreadable: dead-lettered)
    checks    stages.SkipFiltered (with `filters`): an event the filters leave out is acked
              unhandled (status `filtered`); stages.SkipSucceeded (with `deduplicate`): an
              event that succeeded here is skipped (not asked for a provable first copy:
              consumers.first_copies); stages.ValidatePayload (a handler taking
              Event[Model]): data validated, or dead-lettered as invalid-data
    attempts  stages.RunHandler: the handler run as the retry policy says, in a handler slot,
              each attempt started when the subscription's rate allows (consumers.pacing)
    settle    consumers.settling: the verdict carried out (ack, a move into a retry tier or the
              dead-letter queue, or a give-back), its status recorded and announced first
    report    stages.Report: what became of it, to the observer

Decode, the checks and the attempts judge: each returns a `Verdict` (consumers.settling) that
ends the judging, or passes the delivery on; none of them does broker I/O, so a verdict is
carried out in one place. What differs between ordered and unordered subscriptions is the
`DeliveryOrder` the consumer chose once (consumers.delivery_order), which the stages ask.

Adding a stage (a filter, a rate limit, a typed-payload check) is one class in consumers.stages
(or a module of its own) with `async def __call__(self, judging: Judging) -> Verdict | None`:
it reads the decoded event and its headers from `judging`, returns None to pass the delivery on,
or a verdict to end it there: `Verdict(Outcome.SKIPPED, status=...)` to ack it unhandled, or
`settler.dead_letter(...)` (with a new `DeadLetterReason`) to dead-letter it. Then put an
instance in the tuple `checks` builds below, at its place in the order. Settling, reporting and
the delivery orders need no change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any, cast

import structlog

from consumers.dead_letter import (
    ATTEMPTS,
    DeadLetterReason,
    Failure,
    read_int,
    without_conveyor_headers,
)
from consumers.deferral import DeferUntilDue
from consumers.delivery import Inbound
from consumers.delivery_order import DeliveryOrder
from consumers.observe import DeliveryObserver, HandlerTracer
from consumers.pacing import Pacer, TokenBucket
from consumers.reporting import StatusReporter
from consumers.settling import SETTLE_RETRY_PAUSE_SECONDS, Outcome, Settler, Verdict
from consumers.stages import (
    Decode,
    Report,
    RunHandler,
    SkipFiltered,
    SkipSucceeded,
    Stage,
    ValidatePayload,
)
from consumers.subscription import Subscription

__all__ = ["DeliveryPipeline", "checks"]

_log = structlog.get_logger(component="consumer")


def checks(
    subscription: Subscription,
    reporter: StatusReporter,
    observer: DeliveryObserver,
    settler: Settler,
    deferral: DeferUntilDue | None = None,
) -> tuple[Stage, ...]:
    """The stages between decoding and the handler, in the order they run: an event not due yet
    first (it is not this delivery's to judge), then the filters, which cost no store lookup;
    validation last, once the event is known to be handled."""
    stages: list[Stage] = [] if deferral is None else [deferral]
    if subscription.filters:
        stages.append(SkipFiltered(subscription))
    if subscription.deduplicate:
        stages.append(SkipSucceeded(subscription, reporter, observer))
    if subscription.payload is not None:
        stages.append(ValidatePayload(subscription.payload, settler))
    return tuple(stages)


class DeliveryPipeline:
    """Judges a subscription's deliveries, settles each, and reports what became of it."""

    def __init__(
        self,
        subscription: Subscription,
        *,
        queues: Collection[str],
        own_exchange: str | None = None,
        order: DeliveryOrder,
        settler: Settler,
        reporter: StatusReporter,
        observer: DeliveryObserver,
        tracer: HandlerTracer,
        stopping: asyncio.Event,
        bucket: TokenBucket | None = None,
        deferral: DeferUntilDue | None = None,
    ) -> None:
        """`bucket`: the subscription's rate limit, kept by the caller across reconnects; by
        default a new one when the subscription has a `rate`."""
        self._subscription = subscription
        self._order = order
        self._settler = settler
        self._stopping = stopping
        self._decode = Decode(subscription, queues, settler, own_exchange)
        self._checks = checks(subscription, reporter, observer, settler, deferral)
        if bucket is None and subscription.rate is not None:
            bucket = TokenBucket(subscription.rate)
        pacer = Pacer(subscription.name, bucket, observer=observer, stopping=stopping)
        self._attempts = RunHandler(
            subscription,
            order=order,
            settler=settler,
            reporter=reporter,
            observer=observer,
            tracer=tracer,
            pacer=pacer,
        )
        self._report = Report(subscription, observer)
        self.running: set[asyncio.Task[Any]] = set()  # deliveries being judged and settled

    async def handle(self, message: Inbound) -> None:
        """Judge, settle and report one admitted delivery."""
        if self._stopping.is_set():
            self._report(*await self._settler.settle(message, Verdict(Outcome.RETURNED)))
            return
        task = cast("asyncio.Task[Any]", asyncio.current_task())
        self.running.add(task)
        # Bound and reset by token: `bound_contextvars` would copy the whole context each time.
        tokens = structlog.contextvars.bind_contextvars(
            subscription=self._subscription.name,
            event_id=message.message_id,
            event_type=message.routing_key,
            correlation_id=message.correlation_id,
        )
        try:
            verdict = await self._judge_safely(message)
            self._report(*await self._settler.settle(message, verdict))
        finally:
            structlog.contextvars.reset_contextvars(**tokens)
            self.running.discard(task)

    async def judge(self, message: Inbound) -> Verdict:
        """Decide the delivery's fate through the stages; no broker I/O here."""
        judging = self._decode(message)
        if isinstance(judging, Verdict):
            return judging
        for check in self._checks:
            verdict = await check(judging)
            if verdict is not None:
                return verdict
        return await self._attempts(judging)

    async def _judge_safely(self, message: Inbound) -> Verdict:
        tries = 0
        while True:
            tries += 1
            try:
                return await self.judge(message)
            except Exception as error:  # noqa: BLE001 - else the delivery would stay unsettled
                # Unsettled, it would hold a prefetch slot until the channel closes: a few such
                # messages wedge the consumer.
                _log.exception("judging a delivery failed unexpectedly")
                await asyncio.sleep(SETTLE_RETRY_PAUSE_SECONDS)
                outcome = self._order.after_failed_judging(message, tries)
                if outcome is Outcome.DEAD_LETTERED:
                    headers = without_conveyor_headers(dict(message.headers or {}))
                    return self._settler.dead_letter(
                        message,
                        headers,
                        Failure.from_exception(error),
                        read_int(headers, ATTEMPTS),
                        reason=DeadLetterReason.PERMANENT,
                    )
                if outcome is not None:
                    return Verdict(outcome)
