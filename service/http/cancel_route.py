"""DELETE /v1/events/{id}: cancel a delayed event that is not due yet.

Authorized as the status API is (an API key, or an admin token). The event stays in the delay
chain; when it comes due it is acked there without reaching any handler
(service.broker.due), and its status says `cancelled` from now on. Cancelling again answers
the same; once it came due (or for an event that was never delayed) the answer is `409`.
"""

from __future__ import annotations

from aiohttp import web

from service.app_keys import DELAY_BOOK, SETTINGS, STATUS_BOOK
from service.http.auth import UnauthorizedError, authorize
from service.http.delay_book import CancelOutcome
from service.http.problems import Problem, json_response, problem_response
from service.http.status_route import MAX_ID_BYTES, is_admin

__all__ = ["cancel_event"]


async def cancel_event(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    try:
        authorize(request, settings.api_keys)
    except UnauthorizedError:
        if not is_admin(request, settings.admin_tokens):
            raise
    event_id = request.match_info["event_id"]
    source = request.query.get("source")
    found = []
    if len(event_id.encode()) <= MAX_ID_BYTES:
        found = await request.app[STATUS_BOOK].lookup(event_id, source)
    if not found:
        return problem_response(_not_found())
    if len(found) > 1:
        sources = [status.attributes.get("source") for status in found]
        return problem_response(
            Problem(
                409,
                "ambiguous-event-id",
                "Ambiguous event id",
                "events from several sources have this id; add ?source= to pick one",
                {"sources": sources},
            )
        )
    source = str(found[0].attributes.get("source", ""))
    outcome = await request.app[DELAY_BOOK].cancel(event_id, source)
    if outcome is CancelOutcome.NOT_FOUND:
        return problem_response(_not_found())
    if outcome is CancelOutcome.ALREADY_DUE:
        return problem_response(
            Problem(
                409,
                "event-already-due",
                "Event already due",
                "only a delayed event that is not due yet can be cancelled; this one has been "
                "routed to its subscriptions (or was never delayed)",
            )
        )
    return json_response({"id": event_id, "source": source, "state": "cancelled"})


def _not_found() -> Problem:
    return Problem(
        404,
        "event-not-found",
        "Event not found",
        "no event with this id is known (never accepted, or its status expired)",
    )
