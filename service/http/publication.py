"""Publishing one accepted event, or a batch's, once: claimed by its source and id, published
with a confirm (or into the delay chain), its status written with the answer. The ingress
(service.http.ingress) and the scheduler's ticks use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
from collections.abc import Sequence

import structlog

from producers import OutgoingEvent, PublishError
from producers.publisher import Publisher
from service.http.answers import problem_for
from service.http.delay_book import RequestDelays
from service.http.idempotency import (
    Answer,
    Deduplicator,
    EventIdConflictError,
    event_fingerprint,
    event_identity,
)
from service.http.problems import Problem
from service.http.status_book import StatusBook
from service.observability.metrics import Metrics
from service.observability.tracing import Tracing
from service.store import Write

__all__ = ["Publication"]

_log = structlog.get_logger(component="ingress")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


class Publication:
    """Publishes one event once: a repeat of its source and id is answered, not republished."""

    def __init__(
        self,
        publisher: Publisher,
        *,
        deduplicator: Deduplicator,
        book: StatusBook,
        delays: RequestDelays,
        metrics: Metrics,
        tracing: Tracing,
        correlation_id: str,
        traceparent: str | None,
    ) -> None:
        self._publisher = publisher
        self._deduplicator = deduplicator
        self._book = book
        self.delays = delays
        self.metrics = metrics
        self._tracing = tracing
        self._correlation_id = correlation_id
        valid = traceparent is not None and _TRACEPARENT.fullmatch(traceparent) is not None
        self._traceparent = traceparent if valid else None

    async def __call__(self, event: OutgoingEvent) -> None:
        answer = await self._deduplicator.once(
            "event",
            event_identity(event),
            event_fingerprint(event),
            functools.partial(self._publish, event),
            conflict=functools.partial(EventIdConflictError, event.source, event.id),
        )
        if answer.replayed:
            self.metrics.events_deduplicated.inc()
            _log.info("duplicate event not published again", event_id=event.id)
        else:
            self.metrics.events_accepted.inc()

    def _status_writes(self, event: OutgoingEvent) -> tuple[Write, ...]:
        try:
            return tuple(self._book.accepted_writes(event))
        except Exception as error:  # noqa: BLE001 - the event is safe in RabbitMQ; say yes
            # Its status appears once a consumer reports on it.
            _log.warning("could not record the accepted event's status", error=str(error))
            return ()

    def _first_copy_mark(self, event: OutgoingEvent, first: bool) -> str | None:  # noqa: FBT001 - the claim's answer, passed along
        """Only a first claim's publish is marked: after an earlier attempt (a 503 whose
        publish may have reached RabbitMQ) a copy may be queued (producers.first_copy)."""
        return self._book.marks.mark(event.source, event.id) if first else None

    async def _publish(self, event: OutgoingEvent, first: bool) -> Answer:  # noqa: FBT001 - the claim's answer, passed along
        # Bound with tokens and reset, not `bound_contextvars`, which reads the whole context
        # first and binds twice for every event published. Same effect.
        tokens = structlog.contextvars.bind_contextvars(
            event_id=event.id, event_type=event.type, correlation_id=self._correlation_id
        )
        event, destination, scheduled = self.delays.route(event)
        try:
            with self._tracing.publish(event, self._traceparent) as traceparent:
                await self._publisher.publish(
                    event,
                    correlation_id=self._correlation_id,
                    traceparent=traceparent,
                    # A delayed event is published again when due, maybe twice: never marked.
                    first_copy_mark=None
                    if destination is not None
                    else self._first_copy_mark(event, first),
                    destination=destination,
                )
        except PublishError as error:
            _log.warning("event not accepted", reason=error.reason, error=str(error))
            raise
        else:
            _log.debug("event accepted")
            if scheduled:
                self.metrics.delayed_events.labels("scheduled").inc()
                return Answer(202, b"", writes=tuple(scheduled))
            # The status goes to the store with the answer, in one write.
            return Answer(202, b"", writes=self._status_writes(event))
        finally:
            structlog.contextvars.reset_contextvars(**tokens)

    async def _one_of_many(self, event: OutgoingEvent, first: bool) -> Answer | Exception:  # noqa: FBT001 - the claim's answer, passed along
        try:
            return await self._publish(event, first)
        except PublishError as error:
            return error

    async def many(self, events: Sequence[OutgoingEvent]) -> list[OutgoingEvent | Problem]:
        """`settled` for each event of a batch, in one pass: one claim statement, one write of
        the frames to RabbitMQ, one status write (a repeated id still takes its own turn)."""
        identities = [(event_identity(event), event_fingerprint(event)) for event in events]

        async def produce(
            indices: Sequence[int], firsts: Sequence[bool]
        ) -> list[Answer | Exception]:
            return await self._publish_many([events[index] for index in indices], firsts)

        def conflict(index: int) -> Exception:
            return EventIdConflictError(events[index].source, events[index].id)

        answers = await self._deduplicator.once_many(
            "event", identities, produce, conflict=conflict
        )
        outcomes: list[OutgoingEvent | Problem] = []
        replayed = 0
        for event, answer in zip(events, answers, strict=True):
            if isinstance(answer, Exception):
                problem = problem_for(answer)
                if problem is None:
                    raise answer  # not a failure of this entry: the middleware answers 500
                outcomes.append(problem)
                continue
            if answer.replayed:
                replayed += 1
                _log.info("duplicate event not published again", event_id=event.id)
            outcomes.append(event)
        # Counted once per batch, not per event: each increment takes the counter's lock.
        if replayed:
            self.metrics.events_deduplicated.inc(replayed)
        if accepted := sum(isinstance(outcome, OutgoingEvent) for outcome in outcomes) - replayed:
            self.metrics.events_accepted.inc(accepted)
        return outcomes

    async def _publish_many(
        self, events: Sequence[OutgoingEvent], firsts: Sequence[bool]
    ) -> list[Answer | Exception]:
        if self.delays.any_delayed(events):
            # Each to its own destination: the delay chain or the events exchange.
            return list(
                await asyncio.gather(
                    *(
                        self._one_of_many(event, first)
                        for event, first in zip(events, firsts, strict=True)
                    )
                )
            )
        with (
            structlog.contextvars.bound_contextvars(correlation_id=self._correlation_id),
            contextlib.ExitStack() as spans,
        ):
            traceparents = [
                spans.enter_context(self._tracing.publish(event, self._traceparent))
                for event in events
            ]
            failures = await self._publisher.publish_many(
                events,
                correlation_id=self._correlation_id,
                traceparents=traceparents,
                first_copy_marks=[
                    self._first_copy_mark(event, first)
                    for event, first in zip(events, firsts, strict=True)
                ],
            )
            for event, failure in zip(events, failures, strict=True):
                if failure is not None:
                    _log.warning(
                        "event not accepted",
                        event_id=event.id,
                        event_type=event.type,
                        reason=failure.reason,
                        error=str(failure),
                    )
        # Each accepted event's status goes to the store with its answer: the whole batch's in
        # one write (Deduplicator.once_many).
        return [
            Answer(202, b"", writes=self._status_writes(event)) if failure is None else failure
            for event, failure in zip(events, failures, strict=True)
        ]
