"""Telling what became of a subscription's deliveries: the status ledger and `{ns}.results`."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import structlog

from consumers.completions import (
    COMPLETION_TYPES,
    completion_message,
    completion_routing_key,
    event_attributes,
)
from consumers.dead_letter import DeadLetterReason, Failure
from consumers.deadlines import SharedTimeout
from consumers.event import Event
from consumers.moves import Mover
from consumers.status import DeliveryState, DeliveryUpdate, StatusLedger
from consumers.subscription import Subscription
from producers.frames import WireMessage
from producers.topology import Topology

__all__ = ["StatusOf", "StatusReporter", "malformed_status", "replay_subscription"]

_log = structlog.get_logger(component="consumer")
# The status store is a helper, not a gate: past this, a delivery goes on without its answer.
STORE_TIMEOUT_SECONDS = 5.0


class StatusReporter:
    def __init__(
        self,
        subscription: Subscription,
        *,
        ledger: StatusLedger,
        mover: Mover,
        topology: Topology,
    ) -> None:
        self._subscription = subscription
        self._ledger = ledger
        self._mover = mover
        self._topology = topology
        # Progress notes wait here for the end of the loop's turn: a later state of the same
        # event (a handler that returned at once) replaces its note before it costs a write.
        self._notes: dict[tuple[str, str], DeliveryUpdate] = {}
        self._reports: list[_Report] = []  # waiting for the next batch
        self._reporting: asyncio.Task[None] | None = None
        self._lookup_timeout = SharedTimeout(STORE_TIMEOUT_SECONDS)  # one per delivery: shared

    async def succeeded_before(self, event: Event, subscription: str | None = None) -> bool:
        """Whether `event` already succeeded here; `subscription`: the key it is recorded under
        (a replay's own, `replay_subscription`), by default the subscription's name."""
        try:
            async with self._lookup_timeout():
                return await self._ledger.succeeded_before(
                    subscription or self._subscription.name, event.source, event.id
                )
        except Exception as error:  # noqa: BLE001 - the store being away must not stop delivery
            # Without the answer, run the handler: at-least-once still holds.
            _log.warning(
                "could not ask the store whether the event already succeeded", error=_why(error)
            )
            return False

    def first_copy(self, mark: object, event: Event) -> bool:
        """Whether `mark` is the ingress's first-copy mark of this very event."""
        return self._ledger.vouches_first_copy(mark, event.source, event.id)

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
        A subscription with `completions` off announces nothing: recording is all there is.

        Reports made while others are carried out go together: their states in one store
        write, then their completion events in one write to the broker, each confirmed on its
        own; each state is still stored before its completion event goes out.
        """
        stored: DeliveryUpdate | None = None
        if record:
            stored = update
            # Further along than its note, which is not written then (the store would keep
            # this one anyway); only the note's start time is kept.
            note = self._notes.pop((update.event_id, update.source), None)
            if note is not None and note.state is DeliveryState.PROCESSING:
                stored = update.first_attempt_started(note.at)
        done: asyncio.Future[_Outcome] = asyncio.get_running_loop().create_future()
        # `filtered` is final but not announced: it says no handler was meant to run.
        announcing = self._subscription.completions is True
        announced = update if update.state in COMPLETION_TYPES and announcing else None
        self._reports.append(_Report(stored, announced, correlation_id, done))
        if self._reporting is None:
            self._reporting = asyncio.create_task(
                self._report_all(), name=f"conveyor-reports-{self._subscription.name}"
            )
        outcome = await done
        # Logged here, in the delivery's own task: its lines carry its log context.
        if outcome.unrecorded is not None:
            _log.warning("could not record the event's status", error=outcome.unrecorded)
        if outcome.unannounced is None:
            return True
        if update.state is DeliveryState.SUCCEEDED and self._subscription.deduplicate:
            _log.warning(
                "could not publish the completion event; the delivery stays queued",
                error=outcome.unannounced,
            )
            return False
        _log.warning("could not publish the completion event", error=outcome.unannounced)
        return True

    async def _report_all(self) -> None:
        try:
            while self._reports:
                batch, self._reports = self._reports, []
                try:
                    await self._report_together(batch)
                except Exception as error:  # noqa: BLE001 - each report must get an answer
                    _log.exception("reporting failed unexpectedly")
                    _answer_all(batch, _Outcome(_why(error), _why(error)))
                except BaseException:
                    _answer_all(batch, _INTERRUPTED)
                    raise
        finally:
            self._reporting = None
            # Cancelled (the loop is ending): whoever still waits is answered.
            _answer_all(self._reports, _INTERRUPTED)
            self._reports = []

    async def _report_together(self, batch: list[_Report]) -> None:
        unrecorded = await self._record(batch)
        # Why each report's completion was not confirmed, by its index in the batch.
        unannounced: dict[int, str] = {}
        messages: list[tuple[WireMessage, str]] = []
        announcing: list[int] = []
        for index, report in enumerate(batch):
            if report.announced is None:
                continue
            try:
                message = completion_message(report.announced, correlation_id=report.correlation_id)
            except (TypeError, ValueError) as error:  # a value that cannot be written
                unannounced[index] = f"cannot write the completion event: {error}"
                continue
            messages.append((message, completion_routing_key(report.announced)))
            announcing.append(index)
        failures = await self._mover.announce_many(
            messages, exchange=self._topology.results_exchange
        )
        for index, failure in zip(announcing, failures, strict=True):
            if failure is not None:
                unannounced[index] = str(failure)
        for index, report in enumerate(batch):
            if not report.done.done():
                report.done.set_result(_Outcome(unrecorded.get(index), unannounced.get(index)))

    async def _record(self, batch: list[_Report]) -> dict[int, str]:
        """Store the batch's states in one write: why each was not stored, by index."""
        pending = [
            (index, stored)
            for index, report in enumerate(batch)
            if (stored := report.stored) is not None
        ]
        if not pending:
            return {}
        try:
            async with asyncio.timeout(STORE_TIMEOUT_SECONDS):
                await self._ledger.record_many([update for _, update in pending])
        except (TypeError, ValueError):
            # One state that cannot be written (a value the store refuses) must not leave the
            # others unrecorded: each on its own, then.
            return await self._record_one_by_one(pending)
        except Exception as error:  # noqa: BLE001 - a stale status must not lose the event
            return {index: _why(error) for index, _ in pending}
        return {}

    async def _record_one_by_one(self, pending: list[tuple[int, DeliveryUpdate]]) -> dict[int, str]:
        unrecorded: dict[int, str] = {}
        for index, update in pending:
            try:
                async with asyncio.timeout(STORE_TIMEOUT_SECONDS):
                    await self._ledger.record(update)
            except Exception as error:  # noqa: BLE001 - as in _record
                unrecorded[index] = _why(error)
        return unrecorded


@dataclass(frozen=True, slots=True)
class _Outcome:
    unrecorded: str | None  # why the state was not stored, if it was not
    unannounced: str | None  # why the completion event was not confirmed, if it was not


_INTERRUPTED = _Outcome("the report was interrupted", "the report was interrupted")


@dataclass(slots=True)
class _Report:
    stored: DeliveryUpdate | None  # what to record, if anything
    announced: DeliveryUpdate | None  # the terminal state to announce, if any
    correlation_id: str | None
    done: asyncio.Future[_Outcome]


def _why(error: Exception) -> str:
    # Never empty in a log line: a bare TimeoutError (the store's time ran out) has no message.
    return str(error) or type(error).__name__


def _answer_all(reports: list[_Report], outcome: _Outcome) -> None:
    """Answer each report still waiting with `outcome`'s failures, as far as they concern it: a
    report with nothing to record or announce (a skip, `completions` off) missed neither."""
    for report in reports:
        if not report.done.done():
            report.done.set_result(
                _Outcome(
                    outcome.unrecorded if report.stored is not None else None,
                    outcome.unannounced if report.announced is not None else None,
                )
            )


def replay_subscription(subscription: str, replay: str) -> str:
    """The key a replay's deliveries are recorded (and deduplicated) under: `orders@replay:ID`,
    a status entry of its own beside the subscription's first run."""
    return f"{subscription}@replay:{replay}"


class StatusOf:
    """Builds the status updates of one event for one subscription (or one replay into it)."""

    def __init__(
        self, event: Event, subscription: str, replays: int, replay: str | None = None
    ) -> None:
        self._event = event
        self._subscription = (
            subscription if replay is None else replay_subscription(subscription, replay)
        )
        self._replays = replays
        self.attributes = event_attributes(event)  # also what the filters compare

    @property
    def subscription(self) -> str:
        """The key its updates are recorded under."""
        return self._subscription

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
            attributes=self.attributes,
            replays=self._replays,
            next_attempt_at=None if next_attempt_in is None else now + next_attempt_in,
            failure=failure,
            reason=None if reason is None else reason.value,
        )


def malformed_status(
    identity: dict[str, str] | None, subscription: str, replays: int, failure: Failure
) -> DeliveryUpdate | None:
    """The final status of a message dead-lettered as malformed whose `id` and `source` could
    still be read (consumers.decoding); None without them: its DLQ entry is the only record."""
    if identity is None:
        return None
    return DeliveryUpdate(
        event_id=identity["id"],
        source=identity["source"],
        subscription=subscription,
        state=DeliveryState.DEAD_LETTERED,
        attempts=0,  # no handler ran
        at=time.time(),
        attributes=identity,
        replays=replays,
        failure=failure,
        reason=DeadLetterReason.MALFORMED.value,
    )
