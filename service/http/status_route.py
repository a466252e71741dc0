"""GET /v1/events/{id}: what became of an accepted event, per subscription; `?wait=` long-polls."""

from __future__ import annotations

import re

from aiohttp import web

from service.app_keys import SETTINGS, STATUS_BOOK
from service.http.auth import ForbiddenError, UnauthorizedError, authorize, authorize_admin
from service.http.problems import Problem, json_response, problem_response

__all__ = [
    "EVENT_NOT_FOUND",
    "MAX_ID_BYTES",
    "MAX_WAIT_SECONDS",
    "WAIT_PATTERN",
    "authorize_event_reader",
    "event_status",
    "is_admin",
    "one_event_problem",
]

MAX_WAIT_SECONDS = 60.0
# Up to 60 s in seconds (the unit may be left out) or milliseconds, ASCII digits: the pattern the
# OpenAPI document gives, so a value it allows is never refused and one it refuses never taken.
WAIT_PATTERN = (
    r"^(?:(?:60(?:\.0{1,3})?|[0-5]?[0-9](?:\.[0-9]{1,3})?)s?"
    r"|(?:60000(?:\.0{1,3})?|[0-5]?[0-9]{1,4}(?:\.[0-9]{1,3})?)ms)$"
)
_WAIT = re.compile(WAIT_PATTERN)
MAX_ID_BYTES = 255  # the ingress takes no longer id, so no status can have one


EVENT_NOT_FOUND = Problem(
    404,
    "event-not-found",
    "Event not found",
    "no event with this id is known (never accepted, or its status expired)",
)


def authorize_event_reader(request: web.Request) -> None:
    """An API key, or an admin token: the dashboard looks events up with the one it has."""
    settings = request.app[SETTINGS]
    try:
        authorize(request, settings.api_keys)
    except UnauthorizedError:
        if not is_admin(request, settings.admin_tokens):
            raise


def one_event_problem(sources: list[object]) -> Problem | None:
    """For the sources of the events found with an id: 404 when there are none, 409 when there
    are several; None for exactly one."""
    if not sources:
        return EVENT_NOT_FOUND
    if len(sources) > 1:
        return Problem(
            409,
            "ambiguous-event-id",
            "Ambiguous event id",
            "events from several sources have this id; add ?source= to pick one",
            {"sources": sources},
        )
    return None


async def event_status(request: web.Request) -> web.Response:
    authorize_event_reader(request)
    event_id = request.match_info["event_id"]
    source = request.query.get("source")
    wait_text = request.query.get("wait", "0")
    if _WAIT.fullmatch(wait_text) is None:
        return problem_response(
            Problem(
                400,
                "invalid-wait",
                "Invalid wait",
                f"wait must be a duration such as 500ms or 10s, at most {MAX_WAIT_SECONDS:g}s",
            )
        )
    milliseconds = wait_text.endswith("ms")
    wait = float(wait_text.removesuffix("ms").removesuffix("s")) / (1000 if milliseconds else 1)
    book = request.app[STATUS_BOOK]
    found = []
    if len(event_id.encode()) <= MAX_ID_BYTES:
        found = await (
            book.wait(event_id, source, wait) if wait > 0 else book.lookup(event_id, source)
        )
    problem = one_event_problem([status.attributes.get("source") for status in found])
    if problem is not None:
        return problem_response(problem)
    return json_response(found[0].to_json())


def is_admin(request: web.Request, tokens: tuple[tuple[str, str], ...]) -> bool:
    try:
        authorize_admin(request, tokens)
    except (UnauthorizedError, ForbiddenError):
        return False
    return True
