"""`conveyor dlq ls|show|replay|discard`: a subscription's dead letters (or the unrouted queue).

Filters are checked before anything is asked: a reason conveyor never gives, or a type the
subscription does not take, could only ever match nothing, so it is a usage error naming what
would match.
"""

from __future__ import annotations

import argparse
from typing import Any, TextIO
from urllib.parse import quote

import orjson

from consumers.dead_letter import ERROR_TRACEBACK, DeadLetterReason
from producers.formats import parse_time
from service.broker.routing import topic_matches
from service.cli.http_client import (
    EXIT_ANSWERED_ERROR,
    Answer,
    UsageError,
    ask,
    complain,
    print_json,
    print_table,
)
from service.cli.text import indented, one_line, printable

__all__ = ["REASONS", "dlq_command"]

REASONS = tuple(reason.value for reason in DeadLetterReason)
DEFAULT_LIMIT = 100
_ERROR_COLUMN_CHARS = 60


def _filters(arguments: argparse.Namespace) -> dict[str, str]:
    given = {
        "type": arguments.type,
        "error_class": arguments.error_class,
        "reason": arguments.reason,
        "since": arguments.since,
        "until": arguments.until,
    }
    for name, value in given.items():
        # An empty value would be no filter at all: refused rather than ignored.
        if value is not None and not value.strip():
            raise UsageError(f"--{name.replace('_', '-')}: give a value (--all means all)")
    return {name: value for name, value in given.items() if value is not None}


async def dlq_command(arguments: argparse.Namespace, out: TextIO) -> int:
    unrouted = arguments.queue == "unrouted"
    base = (
        "/v1/admin/unrouted"
        if unrouted
        else f"/v1/admin/subscriptions/{quote(arguments.queue, safe='')}/dead-letters"
    )
    filters = _filters(arguments)
    _check_shape(arguments, filters)
    await _check_filters(arguments, filters, unrouted=unrouted)
    match arguments.action:
        case "ls":
            limit = DEFAULT_LIMIT if arguments.limit is None else arguments.limit
            page = {"offset": str(arguments.offset), "limit": str(limit)}
            answer = await ask(arguments, "GET", base, query=filters | page)
            return _finish(arguments, answer, out, filtered=bool(filters))
        case "show":
            path = f"{base}/{quote(arguments.entry[0], safe='')}"
            return _finish(arguments, await ask(arguments, "GET", path), out)
    body: dict[str, Any] = (
        {"ids": arguments.entry}
        if arguments.entry
        else {"filter": filters}
        if filters
        else {"all": True}
    )
    if arguments.rate:
        body["rate"] = arguments.rate
    answer = await ask(arguments, "POST", f"{base}/{arguments.action}", body=body)
    return _finish(arguments, answer, out)


def _check_shape(arguments: argparse.Namespace, filters: dict[str, str]) -> None:
    """Each action with only what it uses: nothing given is silently ignored."""
    action = arguments.action
    if action == "show" and (len(arguments.entry) != 1 or filters or arguments.all):
        raise UsageError("dlq show takes one entry id (and no filters or --all)")
    if action == "ls" and (arguments.entry or arguments.all):
        raise UsageError("dlq ls takes filters, not entry ids or --all (see one with dlq show)")
    if arguments.rate is not None and action != "replay":
        raise UsageError("only dlq replay takes --rate")
    if action != "ls" and (arguments.offset or arguments.limit is not None):
        raise UsageError("only dlq ls takes --offset and --limit")
    if action in ("replay", "discard"):
        chosen = [bool(arguments.entry), bool(filters), arguments.all]
        if sum(chosen) != 1:
            raise UsageError("say which entries: ids, filters (--type ...) or --all")


async def _check_filters(
    arguments: argparse.Namespace, filters: dict[str, str], *, unrouted: bool
) -> None:
    reason = filters.get("reason")
    if reason is not None and unrouted:
        raise UsageError(
            "--reason: unrouted events carry no reason (no handler failed them); "
            "filter them by --type or time"
        )
    if reason is not None and reason not in REASONS:
        raise UsageError(
            f"--reason: no dead letter has reason {reason!r}; one of {', '.join(REASONS)}"
        )
    for name in ("since", "until"):
        if name in filters:
            try:
                parse_time(filters[name])
            except ValueError:
                raise UsageError(
                    f"--{name}: expected an RFC 3339 time with an offset, such as "
                    "2026-12-01T09:30:00Z"
                ) from None
    event_type = filters.get("type")
    if event_type is not None and not unrouted:
        patterns = await _patterns(arguments)
        if patterns is not None and not any(topic_matches(p, event_type) for p in patterns):
            raise UsageError(
                f"--type: subscription {arguments.queue} takes no events of type "
                f"{event_type!r}; it takes {', '.join(patterns)} (an entry from an older "
                "configuration: give its id)"
            )


async def _patterns(arguments: argparse.Namespace) -> list[str] | None:
    """The subscription's event patterns; None when the service does not list it (its answer
    to the dead-letter request says why)."""
    answer = await ask(arguments, "GET", "/v1/admin/subscriptions")
    if answer.failed:
        return None
    for entry in answer.document.get("subscriptions", ()):
        if entry.get("name") == arguments.queue:
            return [str(pattern) for pattern in entry.get("events", ())]
    return None


def _finish(
    arguments: argparse.Namespace, answer: Answer, out: TextIO, *, filtered: bool = False
) -> int:
    if answer.failed:
        complain(answer.problem_line())
        if "kept" in answer.document:  # a pass stopped part way: what it did before
            complain(_counts(answer.document, arguments.action))
        return EXIT_ANSWERED_ERROR
    document = answer.document
    if arguments.json:
        print_json(document, out)
        return 0
    match arguments.action:
        case "ls":
            _print_listing(document, arguments, out, filtered=filtered)
        case "show":
            _print_entry(document, out)
        case _:
            out.write(_counts(document, arguments.action) + "\n")
            _print_skipped(document, out)
            acted = document.get("replayed", 0) + document.get("discarded", 0)
            if arguments.entry and acted < len(set(arguments.entry)):
                missing = len(set(arguments.entry)) - acted
                complain(f"{missing} of the given entry ids were not in {document['queue']}")
    return 0


def _counts(document: dict[str, Any], action: str) -> str:
    done = "replayed" if action == "replay" else "discarded"
    line = f"{document.get('queue', '?')}: {done} {document.get(done, 0)}, kept {document['kept']}"
    if document.get("truncated"):
        line += " (the queue held more than one pass reads: run it again for the rest)"
    return line


def _print_listing(
    document: dict[str, Any], arguments: argparse.Namespace, out: TextIO, *, filtered: bool
) -> None:
    entries, matching, offset = document["entries"], document["matching"], arguments.offset
    what = "entries matching the filters" if filtered else "entries"
    in_queue = f", {document['messages']} in the queue" if filtered else ""
    if matching == 0:
        head = f"no {what}{in_queue}"
    elif not entries:
        head = f"showing 0 of {matching} {what}{in_queue} (--offset {offset} is past the last)"
    else:
        head = f"showing {len(entries)} of {matching} {what}{in_queue}"
        last = offset + len(entries)
        if len(entries) < matching:
            head += f" ({offset + 1}-{last}"
            head += f"; next page: --offset {last})" if last < matching else ")"
    out.write(f"{document['queue']}: {head}\n")
    if document["truncated"]:
        out.write(f"  counted over the first {document['messages']} messages of a longer queue\n")
    if entries:
        _print_entries(entries, out)
    _print_skipped(document, out)


def _print_entries(entries: list[dict[str, Any]], out: TextIO) -> None:
    rows = [("ID", "EVENT", "TYPE", "REASON", "ATTEMPTS", "LAST FAILURE", "ERROR")]
    for entry in entries:
        error = entry["error"]
        message = one_line(f"{error['class']}: {error['message'] or ''}") if error["class"] else "-"
        rows.append(
            (
                entry["id"],
                one_line(entry["event"]["id"] or "-"),
                one_line(entry["event"]["type"] or "-"),
                entry["reason"] or "-",
                "-" if entry["attempts"] is None else str(entry["attempts"]),
                entry["last_failure"] or "-",
                message[:_ERROR_COLUMN_CHARS]
                + ("..." if len(message) > _ERROR_COLUMN_CHARS else ""),
            )
        )
    print_table(rows, out)


def _print_skipped(document: dict[str, Any], out: TextIO) -> None:
    """The entries a pass could not handle as asked; they are all still in the queue."""
    skipped = document.get("skipped", 0)
    if not skipped:
        return
    out.write(f"skipped {skipped} (still in the queue):\n")
    out.writelines(
        f"  {entry['id']}  {one_line(entry['event']['id'] or '-')}  {one_line(entry['why'])}\n"
        for entry in document.get("skipped_entries", [])
    )


def _print_entry(document: dict[str, Any], out: TextIO) -> None:
    event, error = document["event"], document["error"]
    headers = dict(document.get("headers") or {})
    trace = headers.pop(ERROR_TRACEBACK, None)
    fields = (
        ("entry", document["id"]),
        ("event", event["id"]),
        ("type", event["type"]),
        ("source", event["source"]),
        ("reason", document["reason"]),
        ("error", f"{error['class']}: {error['message']}" if error["class"] else None),
        ("attempts", document["attempts"]),
        ("replays", document["replays"]),
        ("first failure", document["first_failure"]),
        ("last failure", document["last_failure"]),
        ("content type", document.get("content_type")),
    )
    out.writelines(
        f"{label + ':':<15}{printable('-' if value is None else str(value))}\n"
        for label, value in fields
    )
    data = document.get("data") or ""
    label = "data (base64)" if document.get("data_base64") else "data"
    out.write(f"{label}:\n{indented(data)}\n" if data else f"{label + ':':<15}(empty)\n")
    if isinstance(trace, str) and trace:
        # The header keeps the traceback's tail: say when its start was cut.
        cut = "" if trace.startswith("Traceback") else "..."
        out.write(f"traceback:\n{indented(cut + trace)}\n")
    if headers:
        out.write("headers:\n")
        width = max(len(name) for name in headers)
        for name in sorted(headers):
            value = headers[name]
            text = value if isinstance(value, str) else _compact_json(value)
            out.write(f"  {printable(name):<{width}}  {printable(text)}\n")


def _compact_json(value: Any) -> str:
    return orjson.dumps(value).decode()
