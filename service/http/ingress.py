"""POST /v1/events: accept CloudEvents over HTTP, answer 202 only once RabbitMQ confirmed them.

Errors become problem+json in service.http.answers.
"""

from __future__ import annotations

import asyncio
import functools
import random
import re
import uuid
from urllib.parse import quote

import orjson
import structlog
from aiohttp import web

from producers import InvalidEventError, OutgoingEvent
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
    IdempotencyConflictError,
    check_key,
    request_fingerprint,
)
from service.http.payload_check import InvalidDataError
from service.http.problems import PROBLEM_CONTENT_TYPE, Problem
from service.http.publication import Publication
from service.settings import Settings

__all__ = ["INGEST_PATH", "ingest", "publish_inside"]

_log = structlog.get_logger(component="ingress")
CORRELATION_HEADER = "X-Correlation-ID"
_CORRELATION = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


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
    publish = Publication(
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
    publish = Publication(
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


async def _accept(parsed: ParsedSingle | ParsedBatch, publish: Publication) -> Answer:
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
