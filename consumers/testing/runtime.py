"""One subscription's runtime in memory: its delivery path assembled as the service assembles it
(consumers.assembly), over the in-memory broker's stand-ins, its handler's calls recorded."""

from __future__ import annotations

import asyncio
import contextvars
from dataclasses import dataclass

from consumers.assembly import DeliveryPath, assemble
from consumers.attempts import HandlerCancelledError, timed_out
from consumers.event import Event, Handler
from consumers.observe import NO_HANDLER_TRACER, FailureReport
from consumers.subscription import Subscription
from consumers.testing.broker import InMemoryBroker, MemoryLedger, QueuedDelivery, VirtualClock
from consumers.testing.results import Attempt, SubscriptionRun
from consumers.watch import HandlerSteps

__all__ = ["SubscriptionRuntime"]

# The run (one sent event, one subscription) whose delivery the current task handles.
_RUN: contextvars.ContextVar[SubscriptionRun] = contextvars.ContextVar("conveyor_test_run")


class _RecordedHandler:
    """The user's handler, each call recorded on the run of the delivery it belongs to."""

    def __init__(self, handler: Handler, subscription: Subscription, clock: VirtualClock) -> None:
        self._handler = handler
        self._timeout = subscription.timeout
        self._clock = clock

    async def __call__(self, event: Event) -> None:
        run = _RUN.get()
        at = self._clock.now()
        try:
            await self._handler(event)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            # Cancelled from outside: in the harness only the attempt's timeout does that.
            cancelled_by_timeout = task is not None and task.cancelling() > 0
            error = (
                timed_out(self._timeout)
                if cancelled_by_timeout
                else HandlerCancelledError("the handler raised CancelledError")
            )
            run.attempts.append(Attempt(event.attempt, error, at))
            raise
        except Exception as error:
            run.attempts.append(Attempt(event.attempt, error, at))
            raise
        run.attempts.append(Attempt(event.attempt, None, at))


class _RunObserver:
    """The runtime's DeliveryObserver: each delivery's settlement, on its run (the rest is for
    metrics, which the harness has none of)."""

    def handler_ran(self, subscription: str, seconds: float) -> None:  # noqa: ARG002 - the protocol's
        return None

    def delivery_settled(self, subscription: str, outcome: str) -> None:  # noqa: ARG002 - the protocol's
        _RUN.get().settlements.append(outcome)

    def retry_scheduled(self, subscription: str, tier: str) -> None:  # noqa: ARG002 - the protocol's
        return None

    def failure_seen(self, subscription: str, failure: FailureReport) -> None:  # noqa: ARG002 - the protocol's
        return None

    def event_filtered(self, subscription: str) -> None:  # noqa: ARG002 - the protocol's
        return None

    def rate_wait_began(self, subscription: str) -> None:  # noqa: ARG002 - the protocol's
        return None

    def rate_wait_ended(self, subscription: str, seconds: float) -> None:  # noqa: ARG002 - the protocol's
        return None

    def dedup_lookup(self, subscription: str, *, skipped: bool) -> None:  # noqa: ARG002 - the protocol's
        return None


@dataclass(frozen=True, slots=True)
class SubscriptionRuntime:
    """A subscription's delivery path as consumers.assembly puts it together for the runtime,
    over the in-memory broker, its handler's calls recorded."""

    subscription: Subscription
    path: DeliveryPath

    @classmethod
    def assemble(
        cls,
        subscription: Subscription,
        *,
        broker: InMemoryBroker,
        ledger: MemoryLedger,
        stopping: asyncio.Event,
    ) -> SubscriptionRuntime:
        path = assemble(
            subscription,
            handler=_RecordedHandler(subscription.handler, subscription, broker.clock),
            queues=frozenset({broker.queues[subscription.name].name}),
            consumer_tags=(f"conveyor-test.{subscription.name}",),
            topology=broker.topology,
            mover=broker,
            ledger=ledger,
            observer=_RunObserver(),
            tracer=NO_HANDLER_TRACER,
            steps=HandlerSteps(),
            stopping=stopping,
            retry_clock=broker.clock,
        )
        return cls(subscription, path)

    async def deliver(self, delivery: QueuedDelivery) -> None:
        """The delivery taken in as the consumer takes it: its order admits it to the pipeline."""
        run = delivery.run
        _RUN.set(run)  # before the first await: an ordered delivery joins its lane right away
        try:
            await self.path.order.admit(delivery, self.path.pipeline.handle)
        finally:
            run.running -= 1
