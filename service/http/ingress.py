"""POST /v1/events: accept CloudEvents over HTTP, answer 202 only once RabbitMQ confirmed them.

Errors become problem+json in service.http.answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import re
import uuid
from collections.abc import Sequence
from urllib.parse import quote

import orjson
import structlog
from aiohttp import web

from producers import InvalidEventError, OutgoingEvent, PublishError
from producers.publisher import Publisher
from service.app_keys import (
    ADMISSION,
    DEDUPLICATOR,
    DELAY_BOOK,
    LINK,
    METRICS,
    PAYLOAD_CHECK,
    PUBLISHER,
    SETTINGS,
    STATUS_BOOK,
    TRACING,
)
from service.http.admission import BODY_COPIES, EVENT_BYTES, Ticket, events_bound
from service.http.answers import INGEST_PATH, RETRY_AFTER_SECONDS, problem_for
from service.http.auth import authorize
from service.http.cloudevents import (
    MalformedJsonError,
    ParsedBatch,
    ParsedSingle,
    check_header_text,
    parse_request,
)
from service.http.delay_book import RequestDelays
from service.http.deliverat import DELAY_HEADER, requested_delay
from service.http.idempotency import (
    IDEMPOTENCY_HEADER,
    Answer,
    Deduplicator,
    EventIdConflictError,
    IdempotencyConflictError,
    check_key,
    event_fingerprint,
    event_identity,
    request_fingerprint,
)
from service.http.payload_check import InvalidDataError
from service.http.problems import PROBLEM_CONTENT_TYPE, Problem
from service.http.status_book import StatusBook
from service.observability.metrics import Metrics
from service.observability.tracing import Tracing
from service.settings import Settings
from service.store import Write

__all__ = ["INGEST_PATH", "ingest", "publish_inside"]

_log = structlog.get_logger(component="ingress")
CORRELATION_HEADER = "X-Correlation-ID"
_CORRELATION = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


async def _read_body(
    request: web.Request, limit: int, read_timeout: float, ticket: Ticket
) -> bytes:
    length = request.content_length
    if length is not None and length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=length)
    # Reserved before a byte is read: a request that does not fit is refused unread.
    if length is not None and not ticket.take(charge := length * BODY_COPIES):
        await ticket.reserve(charge)
    # client_max_size (set to the same limit) stops a chunked body that grows past it.
    if request.content.is_eof():
        # The whole body came with the headers (the usual small event): reading it cannot
        # wait, so no timer to arm and cancel.
        body = await request.read()
        if length is None and not ticket.take(charge := len(body) * BODY_COPIES):
            await ticket.reserve(charge)
        return body
    try:
        async with asyncio.timeout(read_timeout):
            if length is not None:
                return await request.read()
            return await _read_chunked(request, limit, ticket)
    except TimeoutError:
        # A client trickling its body (slow loris) holds an admission slot: bound it.
        raise web.HTTPRequestTimeout(
            text=f"the body did not arrive within {read_timeout:g} s (CONVEYOR_HTTP_READ_TIMEOUT)"
        ) from None


async def _read_chunked(request: web.Request, limit: int, ticket: Ticket) -> bytes:
    """A body of unknown length, its bytes reserved as they arrive."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.readany():
        size += len(chunk)
        if size > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
        if not ticket.take(charge := len(chunk) * BODY_COPIES):
            await ticket.reserve(charge)
        chunks.append(chunk)
    return b"".join(chunks)


def _correlation_id(request: web.Request) -> str:
    presented = request.headers.get(CORRELATION_HEADER)
    if presented is not None and _CORRELATION.fullmatch(presented):
        return presented
    return _new_correlation_id()


def _new_correlation_id() -> str:
    # Not `uuid.uuid4()`: its `os.urandom` call lets go of the GIL, and the request then waits for
    # the store's thread to hand it back. An id to trace by needs no secret randomness.
    return str(uuid.UUID(int=random.getrandbits(128), version=4))


async def ingest(request: web.Request) -> web.Response:
    # Few coroutine frames between the task and the publish: every resumption of the request
    # (claim, confirm, store write) passes through each of them.
    app = request.app
    settings = app[SETTINGS]
    with app[TRACING].ingest(request):
        authorize(request, settings.api_keys)
        with app[ADMISSION].admit() as ticket:
            return await _admitted(request, settings, ticket)


async def publish_inside(app: web.Application, event: OutgoingEvent) -> None:
    """One event made inside the service (a schedule's tick) on the ingress's own path: its
    source and id claimed, published with confirm, its status stored; a copy accepted before
    publishes nothing. Raises what a request would answer as a problem (PublishError,
    StoreUnavailableError, IdempotencyInProgressError, EventIdConflictError). Its logs carry
    the event's id as their correlation id."""
    publish = _Publication(
        app[PUBLISHER],
        deduplicator=app[DEDUPLICATOR],
        book=app[STATUS_BOOK],
        # No request header: only the event's own `deliverat`, as over HTTP.
        delays=RequestDelays(app[DELAY_BOOK], app[LINK].chain, app[SETTINGS].max_delay, None),
        metrics=app[METRICS],
        tracing=app[TRACING],
        correlation_id=event.id,
        traceparent=None,
    )
    await publish(event)


async def _admitted(request: web.Request, settings: Settings, ticket: Ticket) -> web.Response:
    body = await _read_body(request, settings.max_body_bytes, settings.http_read_timeout, ticket)
    content_type = request.headers.get("Content-Type")
    # The events' own memory, reserved before they are parsed.
    charge = events_bound(content_type, body, settings.max_batch_events) * EVENT_BYTES
    if not ticket.take(charge):
        await ticket.reserve(charge)
    headers = {name.lower(): value for name, value in request.headers.items()}
    check_header_text(content_type, headers)  # before the fingerprint encodes them
    correlation_id = _correlation_id(request)
    traceparent = request.headers.get("traceparent", "").strip().lower()
    deduplicator = request.app[DEDUPLICATOR]
    delay = requested_delay(request.headers.get(DELAY_HEADER), settings.max_delay)
    publish = _Publication(
        request.app[PUBLISHER],
        deduplicator=deduplicator,
        book=request.app[STATUS_BOOK],
        delays=RequestDelays(
            request.app[DELAY_BOOK], request.app[LINK].chain, settings.max_delay, delay
        ),
        metrics=request.app[METRICS],
        tracing=request.app[TRACING],
        correlation_id=correlation_id,
        traceparent=traceparent or None,
    )

    def parse() -> ParsedSingle | ParsedBatch:
        parsed = parse_request(
            content_type, headers, body, max_batch_events=settings.max_batch_events
        )
        return request.app[PAYLOAD_CHECK](parsed)  # typed payloads, where a subscription asks

    async def accept() -> Answer:
        return await _accept(parse(), publish)

    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        answer = await accept()
    else:
        fingerprint = request_fingerprint(content_type, headers, body)
        answer = await deduplicator.once(
            "request",
            check_key(key),
            fingerprint,
            # Whether a copy may exist is each event's own claim's to say, not the request's.
            lambda _first: accept(),
            conflict=functools.partial(IdempotencyConflictError, key),
        )
    response_headers = {CORRELATION_HEADER: correlation_id}
    if answer.status == 503:  # noqa: PLR2004 - the status that tells a client to retry
        response_headers["Retry-After"] = RETRY_AFTER_SECONDS
    if answer.replayed:
        response_headers["Idempotent-Replayed"] = "true"
    if answer.location is not None:
        response_headers["Location"] = answer.location
    elif answer.replayed and answer.status == 202:  # noqa: PLR2004 - accepted
        # The store keeps a replay's status and body only; a single event's body names its id.
        replayed = orjson.loads(answer.body)
        if "id" in replayed:
            response_headers["Location"] = _status_location(replayed["id"])
    # An error answer (a batch in which every entry failed alike) is a problem too.
    failed = answer.status >= 400  # noqa: PLR2004 - the error statuses
    return web.Response(
        status=answer.status,
        body=answer.body,
        content_type=PROBLEM_CONTENT_TYPE if failed else "application/json",
        headers=response_headers,
    )


async def _accept(parsed: ParsedSingle | ParsedBatch, publish: _Publication) -> Answer:
    if isinstance(parsed, ParsedSingle):
        publish.delays.check(parsed.event)
        await publish(parsed.event)  # a PublishError becomes the 503 problem
        location = _status_location(parsed.event.id)
        body = orjson.dumps({"id": parsed.event.id, "location": location})
        return Answer(202, body, location=location)
    entries = [publish.delays.checked(entry) for entry in parsed.entries]
    valid = [entry for entry in entries if isinstance(entry, OutgoingEvent)]
    published = iter(await publish.many(valid) if valid else [])
    outcomes = [
        next(published) if isinstance(entry, OutgoingEvent) else _invalid(entry)
        for entry in entries
    ]
    results = [
        _accepted_entry(outcome)
        if isinstance(outcome, OutgoingEvent)
        else {"error": outcome.body()}
        for outcome in outcomes
    ]
    failures = [outcome for outcome in outcomes if isinstance(outcome, Problem)]
    for failure in failures:
        publish.metrics.event_rejected(failure.slug)
    status = _batch_status(len(outcomes), failures)
    if status < 400:  # noqa: PLR2004 - some or all accepted
        return Answer(status, orjson.dumps({"results": results}))
    rejected = Problem(
        status,
        "batch-rejected",
        "Batch rejected",
        f"none of the {len(outcomes)} events was accepted; results holds each entry's problem",
        {"results": results},
    )
    return Answer(status, orjson.dumps(rejected.body()))


def _status_location(event_id: str) -> str:
    return f"/v1/events/{quote(event_id, safe='')}"


def _accepted_entry(event: OutgoingEvent) -> dict[str, str]:
    return {"id": event.id, "location": _status_location(event.id)}


def _batch_status(total: int, failures: list[Problem]) -> int:
    """202 when every entry was accepted; one shared status when all failed alike; else 207."""
    if not failures:
        return 202
    statuses = {failure.status for failure in failures}
    if len(failures) == total and len(statuses) == 1:
        return statuses.pop()
    return 207


def _invalid(error: InvalidEventError | MalformedJsonError | InvalidDataError) -> Problem:
    problem = problem_for(error)
    assert problem is not None  # noqa: S101 - problem_for maps both
    return problem


class _Publication:
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
