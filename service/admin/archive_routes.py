"""/v1/admin/archive: browse the archive stream, show one event, replay into one subscription.

Times are RFC 3339 or Unix seconds. Every read ends (docs/archive.md): at `until` (by default
the moment the request came), at `limit` matches, after `MAX_SCANNED` archived events (the
answer then gives `next_after_offset` to go on from), or at the stream's end.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from importlib import resources
from typing import Any

import orjson
from aiohttp import web

from producers.formats import InvalidEventError, parse_time
from producers.topology import Topology
from service.admin.api import ADMIN_PREFIX, PAGE_HEADERS, admin_operation
from service.app_keys import LINK, REPLAYS, SETTINGS
from service.archive import (
    ArchiveOffError,
    ArchiveQuery,
    ReplayRequest,
    read_archive,
)
from service.archive.replay_progress import ReplayConflictError, UnknownSubscriptionError
from service.archive.replays import BACKFILL_PREFIX, Replays
from service.http.problems import Problem, json_response, problem_response

__all__ = ["add_archive_routes", "archive_script"]

MAX_LIMIT = 1000
MAX_SCANNED = 100_000
DEFAULT_RATE = 100.0
MAX_RATE = 5000.0
MAX_FILTER_LENGTH = 255
REPLAY_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_BASE = f"{ADMIN_PREFIX}/archive"


class _BadRequestError(ValueError):
    pass


def add_archive_routes(app: web.Application) -> None:
    app.router.add_get(_BASE, list_archive)
    app.router.add_get(f"{_BASE}/span", archive_span)
    app.router.add_get(f"{_BASE}/events/{{event_id:.+}}", show_archived_event)
    app.router.add_post(f"{_BASE}/replay", start_replay)
    app.router.add_get(f"{_BASE}/replays", list_replays)
    app.router.add_get(f"{_BASE}/replays/{{replay_id}}", show_replay)
    app.router.add_delete(f"{_BASE}/replays/{{replay_id}}", cancel_replay)


async def archive_script(_request: web.Request) -> web.Response:
    # The dashboard's archive panel (its span, a replay form), served beside dashboard.js.
    script = resources.files("service.admin").joinpath("archive.js").read_bytes()
    return web.Response(body=script, content_type="text/javascript", headers=PAGE_HEADERS)


async def list_archive(request: web.Request) -> web.Response:
    admin_operation(request, "archive.list")
    if (replays := _replays(request)) is None:
        return _archive_off()
    try:
        query = _query(dict(request.query), now=replays.clock.now())
        limit = _bounded_int(request.query.get("limit", "100"), "limit", 1, MAX_LIMIT)
        after = request.query.get("after_offset")
        after_offset = None if after is None else _bounded_int(after, "after_offset", 0, 2**62)
    except _BadRequestError as error:
        return _bad_request(str(error))
    rows: list[dict[str, Any]] = []
    scanned, last_offset, complete = 0, after_offset, True
    try:
        async with request.app[LINK].channel() as channel:
            events = read_archive(
                channel,
                _topology(request),
                since=query.since,
                after_offset=after_offset,
                idle=request.app[SETTINGS].archive_read_idle,
            )
            async with contextlib.aclosing(events):
                async for event in events:
                    scanned += 1
                    if query.past(event):
                        break
                    last_offset = event.offset
                    if query.matches(event):
                        rows.append(event.summary())
                        if len(rows) >= limit:
                            complete = False
                            break
                    if scanned >= MAX_SCANNED:
                        complete = False
                        break
    except ArchiveOffError:
        return _archive_off()
    return json_response(
        {
            "events": rows,
            "scanned": scanned,
            "complete": complete,
            # Where a next page starts, when this one stopped before the window's end.
            "next_after_offset": None if complete else last_offset,
        }
    )


async def show_archived_event(request: web.Request) -> web.Response:
    event_id = request.match_info["event_id"]
    admin_operation(request, "archive.show", event_id=event_id)
    if (replays := _replays(request)) is None:
        return _archive_off()
    try:
        query = _query(dict(request.query), now=replays.clock.now())
    except _BadRequestError as error:
        return _bad_request(str(error))
    scanned = 0
    try:
        async with request.app[LINK].channel() as channel:
            events = read_archive(
                channel,
                _topology(request),
                since=query.since,
                idle=request.app[SETTINGS].archive_read_idle,
            )
            async with contextlib.aclosing(events):
                async for event in events:
                    scanned += 1
                    if query.past(event) or scanned > MAX_SCANNED:
                        break
                    if event.id == event_id and query.matches(event):
                        return json_response(event.document())
    except ArchiveOffError:
        return _archive_off()
    return problem_response(
        Problem(
            404,
            "not-archived",
            "No such archived event",
            f"no event {event_id!r} in the archive between since and until",
        )
    )


async def archive_span(request: web.Request) -> web.Response:
    admin_operation(request, "archive.span")
    if (replays := _replays(request)) is None:
        return _archive_off()
    settings = request.app[SETTINGS]
    try:
        oldest, newest = await replays.span()
    except ArchiveOffError:
        return _archive_off()
    return json_response(
        {
            "stream": _topology(request).archive,
            "retention_seconds": settings.archive,
            "max_bytes": settings.archive_max_bytes,
            "oldest": None if oldest is None else oldest.summary(),
            "newest": None if newest is None else newest.summary(),
        }
    )


async def start_replay(request: web.Request) -> web.Response:
    if (replays := _replays(request)) is None:
        admin_operation(request, "archive.replay")
        return _archive_off()
    try:
        replay = _replay_request(orjson.loads(await request.read()), now=replays.clock.now())
    except orjson.JSONDecodeError:
        return _bad_request("the body must be a JSON object")
    except _BadRequestError as error:
        return _bad_request(str(error))
    admin_operation(
        request,
        "archive.replay",
        replay_id=replay.replay_id,
        subscription=replay.subscription,
        dry_run=replay.dry_run,
    )
    try:
        progress, started = await replays.start(replay)
    except UnknownSubscriptionError:
        return problem_response(
            Problem(
                404,
                "unknown-subscription",
                "No such subscription",
                f"no subscription named {replay.subscription!r} in this process",
            )
        )
    except ReplayConflictError as error:
        return problem_response(Problem(409, "replay-conflict", "Replay id taken", str(error)))
    return json_response(progress, status=202 if started else 200)


async def list_replays(request: web.Request) -> web.Response:
    admin_operation(request, "archive.replays")
    if (replays := _replays(request)) is None:
        return _archive_off()
    return json_response({"replays": replays.all()})


async def show_replay(request: web.Request) -> web.Response:
    admin_operation(request, "archive.replay.show")
    replays = _replays(request)
    progress = None if replays is None else replays.get(request.match_info["replay_id"])
    if progress is None:
        return _no_replay()
    return json_response(progress)


async def cancel_replay(request: web.Request) -> web.Response:
    replay_id = request.match_info["replay_id"]
    admin_operation(request, "archive.replay.cancel", replay_id=replay_id)
    replays = _replays(request)
    progress = None if replays is None else await replays.cancel(replay_id)
    if progress is None:
        return _no_replay()
    return json_response(progress)


def _replay_request(document: Any, *, now: float) -> ReplayRequest:
    if not isinstance(document, dict):
        raise _BadRequestError("the body must be a JSON object")
    subscription = document.get("subscription")
    if not isinstance(subscription, str) or not subscription:
        raise _BadRequestError("subscription: the name of the one subscription to replay into")
    if "until" not in document:
        raise _BadRequestError("until: the window's end (RFC 3339 or Unix seconds)")
    replay_id = document.get("replay_id") or f"rp-{uuid.uuid4().hex[:16]}"
    if (
        not isinstance(replay_id, str)
        or not REPLAY_ID.fullmatch(replay_id)
        or replay_id.startswith(BACKFILL_PREFIX)
    ):
        raise _BadRequestError(
            f"replay_id: 1 to 64 of A-Z, a-z, 0-9, '_' or '-', not starting {BACKFILL_PREFIX!r}"
        )
    rate = document.get("rate", DEFAULT_RATE)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate <= MAX_RATE:
        raise _BadRequestError(f"rate: events a second, above 0 and at most {MAX_RATE:g}")
    dry_run = document.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise _BadRequestError("dry_run: true or false")
    fields = {
        name: document[name]
        for name in ("since", "until", "type", "source", "subject")
        if document.get(name) is not None
    }
    return ReplayRequest(
        replay_id=replay_id,
        subscription=subscription,
        query=_query({name: str(value) for name, value in fields.items()}, now=now),
        rate=float(rate),
        dry_run=dry_run,
    )


def _query(values: dict[str, str], *, now: float) -> ArchiveQuery:
    if "since" not in values:
        raise _BadRequestError("since: the window's start (RFC 3339 or Unix seconds)")
    since = _time(values["since"], "since")
    until = _time(values["until"], "until") if "until" in values else now
    if until <= since:
        raise _BadRequestError("until must be later than since")
    filters = {}
    for name in ("type", "source", "subject"):
        value = values.get(name)
        if value is not None and not 0 < len(value) <= MAX_FILTER_LENGTH:
            raise _BadRequestError(f"{name}: 1 to {MAX_FILTER_LENGTH} characters")
        filters[name] = value
    return ArchiveQuery(
        since=since,
        until=until,
        type_pattern=filters["type"],
        source=filters["source"],
        subject=filters["subject"],
    )


def _time(text: str, name: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return parse_time(text).timestamp()
    except InvalidEventError:
        raise _BadRequestError(f"{name}: an RFC 3339 time or Unix seconds") from None


def _bounded_int(text: str, name: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise _BadRequestError(f"{name}: an integer from {low} to {high}") from None
    if not low <= value <= high:
        raise _BadRequestError(f"{name}: an integer from {low} to {high}")
    return value


def _topology(request: web.Request) -> Topology:
    return Topology(request.app[SETTINGS].namespace)


def _replays(request: web.Request) -> Replays | None:
    """The archive's replays; None when the archive is off."""
    return request.app.get(REPLAYS)


def _archive_off() -> web.Response:
    return problem_response(
        Problem(
            404,
            "archive-off",
            "No archive",
            "the archive is off: set CONVEYOR_ARCHIVE (a retention such as 7d) to keep events",
        )
    )


def _no_replay() -> web.Response:
    return problem_response(
        Problem(404, "unknown-replay", "No such replay", "no replay with this id in this process")
    )


def _bad_request(detail: str) -> web.Response:
    return problem_response(Problem(400, "invalid-admin-request", "Invalid request", detail))
