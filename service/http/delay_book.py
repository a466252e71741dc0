"""Delayed events in the store: scheduled at acceptance, then cancelled or released when due.

A delayed event's row says `scheduled` (with its due time) from its 202 until it comes due.
Cancelling (DELETE /v1/events/{id}) and coming due (service.broker.due) both move the row out
of `scheduled` with one conditional statement, so exactly one of them wins, whichever process
each runs in, and each then reads which one did.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import orjson

from producers import InvalidEventError, OutgoingEvent
from producers.delay import DelayChain
from producers.publisher import Destination
from service.broker.due import Release
from service.clock import SYSTEM_CLOCK, Clock
from service.http.cloudevents import MalformedJsonError
from service.http.deliverat import DELIVERAT, Due, check_deliverat, due_of
from service.http.payload_check import InvalidDataError
from service.http.status_book import StatusBook
from service.store import BatchWriter, Statements, Store, Write

__all__ = ["CancelOutcome", "DelayBook", "RequestDelays"]

# Why a batch entry was refused before its `deliverat` was looked at.
Refused = InvalidEventError | MalformedJsonError | InvalidDataError


class CancelOutcome(enum.StrEnum):
    CANCELLED = "cancelled"  # it will not be delivered (now, or already before)
    ALREADY_DUE = "already-due"  # it came due (or was never delayed): too late
    NOT_FOUND = "not-found"


class DelayBook:
    def __init__(
        self,
        store: Store,
        writer: BatchWriter,
        book: StatusBook,
        *,
        ttl: float,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._store = store
        self._writer = writer
        self._book = book
        self._ttl = ttl
        self._clock = clock

    def now(self) -> float:
        """The time due times are reckoned from."""
        return self._clock.now()

    def scheduled_writes(self, event: OutgoingEvent, due: Due) -> list[Write]:
        """What records a delayed event RabbitMQ confirmed into the chain; the caller commits
        it with its idempotency answer. Its status lives until `ttl` after it is due."""
        now = self._clock.now()
        return [
            (
                Statements.schedule_event,
                (
                    event.id,
                    event.source,
                    orjson.dumps(_attributes(event)).decode(),
                    now,
                    due.at + self._ttl,
                    due.at,
                ),
            )
        ]

    async def cancel(self, event_id: str, source: str) -> CancelOutcome:
        await self._store.write([(Statements.cancel_event, (event_id, source))])
        rows = await self._store.query(Statements.select_delay_state, event_id, source)
        if not rows:
            return CancelOutcome.NOT_FOUND
        if rows[0][0] == "cancelled":
            return CancelOutcome.CANCELLED
        return CancelOutcome.ALREADY_DUE

    async def release(self, event: OutgoingEvent, due_at: float | None) -> Release:
        """Claim the event for delivery, unless it was cancelled; raise when the store cannot
        answer (the caller then leaves the message in its queue and tries again)."""
        now = self._clock.now()
        release = (
            Statements.release_event,
            (
                event.id,
                event.source,
                orjson.dumps(_attributes(event)).decode(),
                now + self._ttl,
                due_at,
            ),
        )
        await self._store.write([release])
        rows = await self._store.query(Statements.select_delay_state, event.id, event.source)
        if rows and rows[0][0] == "cancelled":
            return Release.CANCELLED
        return Release.PUBLISH

    async def record_released(self, event: OutgoingEvent) -> None:
        """Where the released event was routed, as the ingress records an accepted one."""
        await self._writer.store(*self._book.accepted_writes(event))


def _attributes(event: OutgoingEvent) -> dict[str, str]:
    attributes = dict(event.attributes)
    if event.datacontenttype is not None:
        attributes["datacontenttype"] = event.datacontenttype
    return attributes


class RequestDelays:
    """A request's delayed events: checked before they are claimed, and, when they are
    published, sent into the delay chain instead of the events exchange (producers.delay)."""

    def __init__(
        self, book: DelayBook, chain: DelayChain | None, max_delay: float, delay: float | None
    ) -> None:
        self.book = book
        self._chain = chain
        self._max_delay = max_delay
        self._delay = delay  # the request's Conveyor-Delay, in seconds

    def check(self, event: OutgoingEvent) -> None:
        if self._delay is None:
            check_deliverat(event, self.book.now(), self._max_delay)

    def checked(self, entry: OutgoingEvent | Refused) -> OutgoingEvent | Refused:
        """The batch entry, or why its `deliverat` is refused."""
        if not isinstance(entry, OutgoingEvent):
            return entry
        try:
            self.check(entry)
        except InvalidEventError as error:
            return error
        return entry

    def any_delayed(self, events: Sequence[OutgoingEvent]) -> bool:
        return self._delay is not None or any(DELIVERAT in event.attributes for event in events)

    def route(self, event: OutgoingEvent) -> tuple[OutgoingEvent, Destination | None, list[Write]]:
        """The event as published, where to (None: the events exchange), and what records it
        (empty: the ordinary acceptance)."""
        event, due = due_of(event, self.book.now(), self._delay)
        if due is None or self._chain is None:
            return event, None, []
        to = Destination(self._chain.entry, self._chain.routing_key(due.seconds))
        return event, to, self.book.scheduled_writes(event, due)
