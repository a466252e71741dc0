"""The last stop of every HTTP answer: errors become problem+json in one place, `problem_for`
(domain errors) and the middleware (everything else, including aiohttp's own 404/405/413); then
the answer is counted by route and status.

One middleware, not one for problems and one for metrics: each costs a coroutine frame and a
call per request on the ingest path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from producers import InvalidEventError, PublishError
from service.app_keys import METRICS, SETTINGS
from service.http.admission import OverloadedError
from service.http.auth import ForbiddenError, UnauthorizedError
from service.http.cloudevents import (
    BatchTooLargeError,
    MalformedJsonError,
    UnsupportedMediaTypeError,
)
from service.http.idempotency import (
    EventIdConflictError,
    IdempotencyConflictError,
    IdempotencyInProgressError,
    InvalidIdempotencyKeyError,
)
from service.http.metrics_route import count_answer
from service.http.payload_check import InvalidDataError
from service.http.problems import Problem, problem_response
from service.store import StoreUnavailableError, describe

__all__ = ["INGEST_PATH", "RETRY_AFTER_SECONDS", "answers_middleware", "problem_for"]

_log = structlog.get_logger(component="ingress")
RETRY_AFTER_SECONDS = "2"
INGEST_PATH = "/v1/events"  # served by service.http.ingress; its rejections are counted here


def problem_for(error: Exception) -> Problem | None:  # noqa: C901, PLR0911, PLR0912 - one case per error kind
    """The one mapping from a domain error to the answer the client gets."""
    match error:
        case InvalidEventError(attribute=attribute):
            extra = {"attribute": attribute} if attribute else {}
            return Problem(400, "invalid-event", "Invalid CloudEvent", str(error), extra)
        case MalformedJsonError():
            return Problem(400, "malformed-json", "Malformed JSON", str(error))
        case InvalidDataError(subscription=subscription, errors=errors):
            shown: dict[str, Any] = {"subscription": subscription, "errors": errors}
            return Problem(422, "invalid-data", "Invalid data", str(error), shown)
        case UnsupportedMediaTypeError():
            return Problem(415, "unsupported-media-type", "Unsupported media type", str(error))
        case BatchTooLargeError(limit=limit):
            return Problem(413, "batch-too-large", "Batch too large", str(error), {"limit": limit})
        case IdempotencyConflictError(key=key):
            extra = {"idempotency_key": key}
            return Problem(422, "idempotency-conflict", "Idempotency conflict", str(error), extra)
        case EventIdConflictError(source=source, event_id=event_id):
            extra = {"source": source, "id": event_id}
            return Problem(422, "event-id-conflict", "Event id conflict", str(error), extra)
        case IdempotencyInProgressError():
            return Problem(
                409,
                "idempotency-in-progress",
                "Request in progress",
                str(error),
                headers={"Retry-After": RETRY_AFTER_SECONDS},
            )
        case InvalidIdempotencyKeyError():
            return Problem(400, "invalid-idempotency-key", "Invalid Idempotency-Key", str(error))
        case ForbiddenError() | UnauthorizedError():
            return _access_problem(error)
        case OverloadedError():
            return Problem(
                503,
                "overloaded",
                "Overloaded",
                str(error),
                {"limit": error.limit},
                headers={"Retry-After": "1"},
            )
        case StoreUnavailableError():
            # Claims come before publishing: nothing was published, the retry loses nothing.
            # Why (addresses, users, file paths) goes to the log, not to the client.
            _log.warning("store unavailable; answered 503", error=describe(error))
            return Problem(
                503,
                "store-unavailable",
                "Store unavailable",
                "the store cannot take the request now; retry later",
                headers={"Retry-After": RETRY_AFTER_SECONDS},
            )
        case PublishError(reason=reason):
            return Problem(
                503,
                reason,
                "Broker unavailable",
                f"the event was not accepted: {error}; retry later",
                headers={"Retry-After": RETRY_AFTER_SECONDS},
            )
    return None


def _access_problem(error: ForbiddenError | UnauthorizedError) -> Problem:
    if isinstance(error, ForbiddenError):
        return Problem(403, "forbidden", "Forbidden", str(error))
    return Problem(
        401,
        "unauthorized",
        "Unauthorized",
        str(error),
        headers={"WWW-Authenticate": 'Bearer realm="conveyor"'},
    )


@web.middleware
async def answers_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every answer passes here: errors become problem+json, then the status is counted."""
    try:
        response = await handler(request)
    except web.HTTPException as error:
        if error.status < 400:  # noqa: PLR2004 - redirects and successes pass through
            raise
        response = _rejected(request, _http_problem(request, error))
    except Exception as error:  # noqa: BLE001 - the one place any error becomes a problem body
        mapped = problem_for(error)
        if mapped is None:
            _log.exception("unhandled error in request", path=request.path)
            mapped = Problem(
                500, "internal-error", "Internal error", "the request failed unexpectedly"
            )
        response = _rejected(request, mapped)
    count_answer(request, response.status)
    return response


def _http_problem(request: web.Request, error: web.HTTPException) -> Problem:
    """aiohttp's own errors (404, 405, 413, ...) as problems."""
    max_body = request.app[SETTINGS].max_body_bytes
    detail = (
        f"the body is larger than {max_body} bytes (CONVEYOR_MAX_BODY_BYTES)"
        if isinstance(error, web.HTTPRequestEntityTooLarge)
        else error.text or error.reason
    )
    slug = error.reason.lower().replace(" ", "-")
    headers = {k: v for k, v in error.headers.items() if k.lower() == "allow"}
    return Problem(error.status, slug, error.reason, detail, headers=headers)


def _rejected(request: web.Request, problem: Problem) -> web.Response:
    if request.method == "POST" and request.path == INGEST_PATH:
        request.app[METRICS].event_rejected(problem.slug)
    return problem_response(problem)
