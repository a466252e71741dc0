"""/v1/admin/.../dead-letters: list, show, replay and discard a subscription's dead letters.

The same four operations work on `/v1/admin/unrouted` (events no subscription took): a replay
publishes them to the events exchange again, for subscriptions added since.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import decimal
from collections.abc import Callable
from typing import Any

import aiormq.exceptions
import orjson
import structlog
from aiohttp import web

from consumers.moves import MessageMover
from producers.formats import parse_time
from producers.topology import Topology
from service.admin.api import ADMIN_PREFIX, admin_operation
from service.admin.dead_letter_queues import (
    Action,
    DeadLetter,
    PassResult,
    ReplayTarget,
    Selection,
    pass_over,
)
from service.app_keys import LINK, METRICS, SETTINGS, SUBSCRIPTIONS
from service.http.problems import Problem, json_response, problem_response

__all__ = ["add_dead_letter_routes"]

MAX_PAGE = 500
MAX_IDS = 1000
DEFAULT_RATE = 100.0
MAX_RATE = 1000.0
_FILTERS = ("type", "error_class", "reason", "since", "until")
# Not the POST-only actions beside it: a GET or OPTIONS there is a 405 with `Allow: POST`, not
# the lookup of an entry named "replay".
_ENTRY_ID = "/{entry_id:(?!(?:replay|discard)$)[^/]+}"
_LOCKS = web.AppKey("dead_letter_locks", dict[str, asyncio.Lock])
_log = structlog.get_logger(component="admin")


class _BadRequestError(ValueError):
    pass


def add_dead_letter_routes(app: web.Application) -> None:
    app[_LOCKS] = {}
    for base in (f"{ADMIN_PREFIX}/subscriptions/{{name}}/dead-letters", f"{ADMIN_PREFIX}/unrouted"):
        app.router.add_get(base, list_dead_letters)
        app.router.add_get(base + _ENTRY_ID, show_dead_letter)
        app.router.add_post(base + "/replay", replay_dead_letters)
        app.router.add_post(base + "/discard", discard_dead_letters)


class _Target:
    """The queue a request is about, and where its replays go."""

    def __init__(self, request: web.Request) -> None:
        topology = Topology(request.app[SETTINGS].namespace)
        name = request.match_info.get("name")
        if name is None:
            self.label = "unrouted"
            self.queue = topology.unrouted
            # Published again with its type, for subscriptions added since.
            self.replay = ReplayTarget(topology.events_exchange, None)
            return
        subscription = {s.name: s for s in request.app[SUBSCRIPTIONS]}.get(name)
        if subscription is None:
            raise web.HTTPNotFound(text=f"no subscription named {name!r} in this process")
        self.label = name
        self.queue = topology.dead_letter_queue(name)
        # The default exchange puts it straight into the subscription's queue, counted afresh;
        # an ordered subscription's replay goes through its hash exchange to its key's partition,
        # behind whatever that key has queued now.
        self.replay = (
            ReplayTarget("", topology.queue(name))
            if subscription.ordering is None
            else ReplayTarget(topology.partition_exchange(name), None)
        )


class _TargetMissingError(Exception):
    pass


async def _pass(
    request: web.Request,
    target: _Target,
    decide: Callable[[DeadLetter], Action],
    rate: float | None = None,
) -> PassResult:
    link = request.app[LINK]
    timeout = request.app[SETTINGS].publish_timeout
    # One pass per queue at a time in this process: two would each see part of the queue.
    lock = request.app[_LOCKS].setdefault(target.queue, asyncio.Lock())
    async with lock:
        await _check_exists(request, target)
        async with (
            link.channel() as channel,
            link.channel(publisher_confirms=True) as confirming,
        ):
            mover = MessageMover(confirming, timeout=timeout)
            return await pass_over(
                channel, mover, target.queue, decide, replay_to=target.replay, rate=rate
            )


async def _check_exists(request: web.Request, target: _Target) -> None:
    """The queue and its replay target exist, checked before any message is taken."""
    try:
        async with request.app[LINK].channel() as channel:
            await channel.declare_queue(target.queue, passive=True, robust=False)
            if target.replay.queue is not None:
                await channel.declare_queue(target.replay.queue, passive=True, robust=False)
            else:
                await channel.get_exchange(target.replay.exchange, ensure=True)
    except aiormq.exceptions.ChannelNotFoundEntity as error:
        raise _TargetMissingError(str(error)) from None


async def list_dead_letters(request: web.Request) -> web.Response:
    admin_operation(request, "dead-letters.list")
    target = _Target(request)
    try:
        selection = _selection(
            {k: v for k, v in request.query.items() if k not in ("offset", "limit")}
        )
        offset = _bounded_int(request.query.get("offset", "0"), "offset", 0, 10**9)
        limit = _bounded_int(request.query.get("limit", "100"), "limit", 1, MAX_PAGE)
    except _BadRequestError as error:
        return _bad_request(str(error))
    matching: list[dict[str, Any]] = []
    seen = 0

    def collect(letter: DeadLetter) -> Action:
        nonlocal seen
        seen += 1
        if selection.matches(letter):
            matching.append(letter.summary())
        return Action.KEEP

    result = await _guarded_pass(request, target, collect)
    if isinstance(result, web.Response):
        return result
    if result.stopped is not None:
        return _stopped(result)
    return json_response(
        {
            "queue": target.queue,
            "messages": seen,
            "truncated": result.truncated,
            "matching": len(matching),
            "entries": matching[offset : offset + limit],
            **_skipped(result),
        }
    )


async def show_dead_letter(request: web.Request) -> web.Response:
    entry_id = request.match_info["entry_id"]
    admin_operation(request, "dead-letters.show", entry=entry_id)
    target = _Target(request)
    found: list[dict[str, Any]] = []

    def find(letter: DeadLetter) -> Action:
        if letter.entry_id == entry_id and not found:
            found.append(_detail(letter))
        return Action.KEEP

    result = await _guarded_pass(request, target, find)
    if isinstance(result, web.Response):
        return result
    if result.stopped is not None and not found:
        return _stopped(result)
    if not found:
        return problem_response(
            Problem(404, "dead-letter-not-found", "Not found", "no such entry in this queue now")
        )
    return json_response(found[0])


async def replay_dead_letters(request: web.Request) -> web.Response:
    return await _act(request, Action.REPLAY)


async def discard_dead_letters(request: web.Request) -> web.Response:
    return await _act(request, Action.DISCARD)


async def _act(request: web.Request, action: Action) -> web.Response:
    operation = f"dead-letters.{action.value}"
    try:
        document = orjson.loads(await request.read() or b"{}")
        selection, rate = _operation(document, action)
    except (orjson.JSONDecodeError, _BadRequestError) as error:
        admin_operation(request, operation, refused=str(error))
        return _bad_request(str(error))
    admin_operation(request, operation, selection=str(selection))
    target = _Target(request)
    result = await _guarded_pass(
        request,
        target,
        lambda letter: action if selection.matches(letter) else Action.KEEP,
        rate,
    )
    if isinstance(result, web.Response):
        return result
    metrics = request.app[METRICS]
    metrics.dead_letters_replayed.labels(target.label).inc(result.replayed)
    metrics.dead_letters_discarded.labels(target.label).inc(result.discarded)
    _log.info(
        "admin operation done",
        operation=operation,
        replayed=result.replayed,
        discarded=result.discarded,
        kept=result.kept,
        skipped=result.skipped,
        stopped=result.stopped,
    )
    counts = {
        "queue": target.queue,
        "replayed": result.replayed,
        "discarded": result.discarded,
        "kept": result.kept,
        "truncated": result.truncated,
        **_skipped(result),
    }
    if result.stopped is not None:
        # Part of the work is done (the counts say how much); nothing was lost.
        return problem_response(
            Problem(
                503,
                "dead-letter-pass-stopped",
                "Stopped part way",
                f"{result.stopped}; the rest is untouched, retry later",
                counts,
                headers={"Retry-After": "5"},
            )
        )
    return json_response(counts)


async def _guarded_pass(
    request: web.Request,
    target: _Target,
    decide: Callable[[DeadLetter], Action],
    rate: float | None = None,
) -> PassResult | web.Response:
    try:
        result = await _pass(request, target, decide, rate)
        if result.skipped:
            _log.warning(
                "dead-letter entries skipped; they stay in the queue",
                queue=target.queue,
                skipped=result.skipped,
                why=result.skipped_entries[0].why,
            )
    except _TargetMissingError as error:
        return problem_response(
            Problem(
                404,
                "queue-not-declared",
                "Queue not declared",
                f"{error}: start a conveyor with this subscription (or run conveyor topology "
                "--apply) first",
            )
        )
    return result


def _skipped(result: PassResult) -> dict[str, Any]:
    """The entries the pass could not handle as asked (all still in the queue), and why."""
    return {
        "skipped": result.skipped,
        "skipped_entries": [entry.summary() for entry in result.skipped_entries],
    }


def _stopped(result: PassResult) -> web.Response:
    return problem_response(
        Problem(
            503,
            "dead-letter-pass-stopped",
            "Stopped part way",
            f"{result.stopped}; nothing was lost, retry later",
            headers={"Retry-After": "5"},
        )
    )


def _operation(document: Any, action: Action) -> tuple[Selection, float | None]:
    """The selection of a replay or discard: exactly one of `ids`, `filter` or `all: true`."""
    if not isinstance(document, dict):
        raise _BadRequestError("the body must be a JSON object")
    given = [key for key in ("ids", "filter", "all") if key in document]
    if len(given) != 1:
        raise _BadRequestError("say which entries: exactly one of 'ids', 'filter' or 'all': true")
    rate = None
    if action is Action.REPLAY:
        raw_rate = document.get("rate", DEFAULT_RATE)
        # JSON true is a Python int; a rate of `true` is a mistake, not 1 message per second.
        valid = isinstance(raw_rate, int | float) and not isinstance(raw_rate, bool)
        if not valid or not 0 < raw_rate <= MAX_RATE:
            raise _BadRequestError(
                f"rate must be a number of messages per second up to {MAX_RATE:g}"
            )
        rate = float(raw_rate)
    match given[0]:
        case "ids":
            ids = document["ids"]
            if (
                not isinstance(ids, list)
                or not 0 < len(ids) <= MAX_IDS
                or not all(isinstance(entry, str) for entry in ids)
            ):
                raise _BadRequestError(f"ids must be a list of 1 to {MAX_IDS} entry ids (strings)")
            return Selection(ids=frozenset(ids)), rate
        case "filter":
            if not isinstance(document["filter"], dict) or not document["filter"]:
                raise _BadRequestError(f"filter must be an object with some of {list(_FILTERS)}")
            # An empty-looking filter must never widen into "everything": say `all` for that.
            return _selection(document["filter"]), rate
    if document["all"] is not True:
        raise _BadRequestError("'all' must be true")
    return Selection(), rate


def _selection(values: dict[str, Any]) -> Selection:
    """Filters as given: only known names, each a non-empty string (no value means no filter)."""
    unknown = sorted(set(values) - set(_FILTERS))
    if unknown:
        raise _BadRequestError(f"unknown filters {unknown}; known: {list(_FILTERS)}")
    if not all(isinstance(value, str) and value for value in values.values()):
        raise _BadRequestError("each filter value must be a non-empty string")
    try:
        since = parse_time(values["since"]) if "since" in values else None
        until = parse_time(values["until"]) if "until" in values else None
    except ValueError:
        raise _BadRequestError("since and until are RFC 3339 times") from None
    return Selection(
        event_type=values.get("type"),
        error_class=values.get("error_class"),
        reason=values.get("reason"),
        since=since,
        until=until,
    )


def _bounded_int(text: str, name: str, low: int, high: int) -> int:
    # str.isdigit() also takes digits int() refuses, such as '²': ASCII only.
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise _BadRequestError(f"{name} must be an integer from {low} to {high}")
    return int(text)


def _detail(letter: DeadLetter) -> dict[str, Any]:
    detail = letter.summary()
    try:
        detail["data"] = letter.body.decode()
        detail["data_base64"] = False
    except UnicodeDecodeError:
        detail["data"] = base64.b64encode(letter.body).decode()
        detail["data_base64"] = True
    detail["content_type"] = letter.content_type
    detail["headers"] = _json_safe(letter.headers)
    return detail


def _json_safe(value: Any) -> Any:
    """Header values as JSON: bytes as text where they decode, times as RFC 3339."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode(errors="replace")
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    return value


def _bad_request(detail: str) -> web.Response:
    return problem_response(Problem(400, "invalid-admin-request", "Invalid request", detail))
