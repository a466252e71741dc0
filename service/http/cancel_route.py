"""DELETE /v1/events/{id}: cancel a delayed event that is not due yet.

Authorized as the status API is (an API key, or an admin token). The event stays in the delay
chain; when it comes due it is acked there without reaching any handler
(service.broker.due), and its status says `cancelled` from now on. Cancelling again answers
the same; once it came due (or for an event that was never delayed) the answer is `409`.
"""

from __future__ import annotations

from aiohttp import web

from service.app_keys import DELAY_BOOK, STATUS_BOOK
from service.http.delay_book import CancelOutcome
from service.http.problems import Problem, json_response, problem_response
from service.http.status_route import (
    EVENT_NOT_FOUND,
    MAX_ID_BYTES,
    authorize_event_reader,
    one_event_problem,
)

__all__ = ["cancel_event"]


async def cancel_event(request: web.Request) -> web.Response:
    authorize_event_reader(request)
    event_id = request.match_info["event_id"]
    source = request.query.get("source")
    found = []
    if len(event_id.encode()) <= MAX_ID_BYTES:
        found = await request.app[STATUS_BOOK].lookup(event_id, source)
    problem = one_event_problem([status.attributes.get("source") for status in found])
    if problem is not None:
        return problem_response(problem)
    source = str(found[0].attributes.get("source", ""))
    outcome = await request.app[DELAY_BOOK].cancel(event_id, source)
    if outcome is CancelOutcome.NOT_FOUND:
        return problem_response(EVENT_NOT_FOUND)
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
