"""Telling what became of a subscription's deliveries: the status ledger and `{ns}.results`."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import structlog

from consumers.completions import completion_message, completion_routing_key, event_attributes
from consumers.dead_letter import DeadLetterReason, Failure
from consumers.event import Event
from consumers.moves import MessageMover, MoveFailedError
from consumers.status import DeliveryState, DeliveryUpdate, StatusLedger
from consumers.subscription import Subscription
from producers import Topology

__all__ = ["StatusOf", "StatusReporter"]

_log = structlog.get_logger(component="consumer")
# The status store is a helper, not a gate: past this, a delivery goes on without its answer.
STORE_TIMEOUT_SECONDS = 5.0


class StatusReporter:
    def __init__(
        self,
        subscription: Subscription,
        *,
        ledger: StatusLedger,
        mover: MessageMover,
        topology: Topology,
    ) -> None:
        self._subscription = subscription
        self._ledger = ledger
        self._mover = mover
        self._topology = topology
        # Progress notes wait here for the end of the loop's turn: a later state of the same
        # event (a handler that returned at once) replaces its note before it costs a write.
        self._notes: dict[tuple[str, str], DeliveryUpdate] = {}

    async def succeeded_before(self, event: Event) -> bool:
        try:
            async with asyncio.timeout(STORE_TIMEOUT_SECONDS):
                return await self._ledger.succeeded_before(
                    self._subscription.name, event.source, event.id
                )
        except Exception as error:  # noqa: BLE001 - the store being away must not stop delivery
            # Without the answer, run the handler: at-least-once still holds.
            _log.warning(
                "could not ask the store whether the event already succeeded", error=str(error)
            )
            return False

    def note(self, update: DeliveryUpdate) -> None:
        if not self._notes:
            asyncio.get_running_loop().call_soon(self._send_notes)
        self._notes[update.event_id, update.source] = update

    def _send_notes(self) -> None:
        notes, self._notes = self._notes, {}
        for update in notes.values():
            self._ledger.note(update)

    async def report(
        self, update: DeliveryUpdate, *, correlation_id: str | None, record: bool
    ) -> bool:
        """Record the new state, then announce a terminal one; False: return the delivery.

        A succeeded delivery of a deduplicating subscription is acked only after its completion
        event is confirmed: if that fails, the delivery returns and its redelivery is skipped
        and announced again, so the completion goes out at least once without running the
        handler twice. Anywhere else a failed announcement is logged and the delivery acked:
        re-running a handler, or dead-lettering twice, would cost more than a lost notice.
        """
        if record:
            stored = update
            # Further along than its note, which is not written then (the store would keep
            # this one anyway); only the note's start time is kept.
            note = self._notes.pop((update.event_id, update.source), None)
            if note is not None and note.state is DeliveryState.PROCESSING:
                stored = dataclasses.replace(update, first_attempt_at=note.at)
            try:
                async with asyncio.timeout(STORE_TIMEOUT_SECONDS):
                    await self._ledger.record(stored)
            except Exception as error:  # noqa: BLE001 - a stale status must not lose the event
                _log.warning("could not record the event's status", error=str(error))
        if not update.state.terminal:
            return True
        try:
            await self._mover.publish(
                completion_message(update, correlation_id=correlation_id),
                exchange=self._topology.results_exchange,
                routing_key=completion_routing_key(update),
                mandatory=False,  # nobody listening for completions is fine
            )
        except MoveFailedError as error:
            if update.state is DeliveryState.SUCCEEDED and self._subscription.deduplicate:
                _log.warning(
                    "could not publish the completion event; the delivery stays queued",
                    error=str(error),
                )
                return False
            _log.warning("could not publish the completion event", error=str(error))
        return True


class StatusOf:
    """Builds the status updates of one event for one subscription."""

    def __init__(self, event: Event, subscription: str, replays: int) -> None:
        self._event = event
        self._subscription = subscription
        self._replays = replays
        self._attributes = event_attributes(event)

    def __call__(
        self,
        state: DeliveryState,
        attempts: int,
        failure: Failure | None = None,
        *,
        next_attempt_in: float | None = None,
        reason: DeadLetterReason | None = None,
    ) -> DeliveryUpdate:
        now = time.time()
        return DeliveryUpdate(
            event_id=self._event.id,
            source=self._event.source,
            subscription=self._subscription,
            state=state,
            attempts=attempts,
            at=now,
            attributes=self._attributes,
            replays=self._replays,
            next_attempt_at=None if next_attempt_in is None else now + next_attempt_in,
            failure=failure,
            reason=None if reason is None else reason.value,
        )
