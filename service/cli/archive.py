"""`conveyor archive ls|show|replay|replays|cancel`: the archive stream through the admin API.

Times are RFC 3339, Unix seconds, or a duration meaning that long ago (`2h`, `7d`). `replay`
prints a progress line a second until the replay ends; Ctrl-C cancels it on the server too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import Any, TextIO
from urllib.parse import quote

import orjson

from producers.formats import InvalidEventError, parse_time
from service.cli.http_client import Answer, UsageError, ask, finish, print_table
from service.cli.text import indented, one_line, printable
from service.clock import SYSTEM_CLOCK, Clock
from service.settings import parse_duration

__all__ = ["add_archive_command", "archive_command"]

BASE = "/v1/admin/archive"
POLL_SECONDS = 1.0
MAX_LIMIT = 1000


def add_archive_command(commands: Any, common: argparse.ArgumentParser) -> None:
    archive = commands.add_parser(
        "archive",
        parents=[common],
        help="browse the event archive, replay it into one subscription (admin)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    archive.add_argument("action", choices=("ls", "show", "replay", "replays", "cancel"))
    archive.add_argument("id", nargs="?", help="show: an event id; cancel: a replay id")
    archive.add_argument("--since", help="the window's start (RFC 3339, Unix seconds, or 2h ago)")
    archive.add_argument("--until", help="the window's end (default: now)")
    archive.add_argument("--type", help="only types matching this AMQP topic pattern (order.*)")
    archive.add_argument("--source", help="only this source")
    archive.add_argument("--subject", help="only this subject")
    archive.add_argument("--limit", type=int, help=f"ls: at most this many (up to {MAX_LIMIT})")
    archive.add_argument("--after-offset", type=int, help="ls: go on after this stream offset")
    archive.add_argument("--to", help="replay: the one subscription to replay into")
    archive.add_argument("--rate", type=float, help="replay: events a second at most (100)")
    archive.add_argument("--replay-id", help="replay: an id of your own (reuse does nothing)")
    archive.add_argument("--dry-run", action="store_true", help="replay: count, publish nothing")
    archive.add_argument(
        "--detach", action="store_true", help="replay: start it and return (no progress)"
    )


async def archive_command(
    arguments: argparse.Namespace, out: TextIO, clock: Clock = SYSTEM_CLOCK
) -> int:
    action = arguments.action
    if action in ("show", "cancel") and not arguments.id:
        raise UsageError(f"archive {action} takes an id")
    if action in ("ls", "replays", "replay") and arguments.id:
        raise UsageError(f"archive {action} takes no id (filters are options)")
    match action:
        case "ls":
            query = _window(arguments, clock) | _filters(arguments)
            if arguments.limit is not None:
                if not 1 <= arguments.limit <= MAX_LIMIT:
                    raise UsageError(f"--limit: 1 to {MAX_LIMIT}")
                query["limit"] = str(arguments.limit)
            if arguments.after_offset is not None:
                query["after_offset"] = str(arguments.after_offset)
            answer = await ask(arguments, "GET", BASE, query=query)
            return finish(arguments, answer, out, _print_listing)
        case "show":
            path = f"{BASE}/events/{quote(arguments.id, safe='')}"
            answer = await ask(arguments, "GET", path, query=_window(arguments, clock))
            return finish(arguments, answer, out, _print_event)
        case "replays":
            answer = await ask(arguments, "GET", f"{BASE}/replays")
            return finish(arguments, answer, out, _print_replays)
        case "cancel":
            path = f"{BASE}/replays/{quote(arguments.id, safe='')}"
            return finish(arguments, await ask(arguments, "DELETE", path), out, _print_progress)
    return await _replay(arguments, out, clock)


async def _replay(arguments: argparse.Namespace, out: TextIO, clock: Clock) -> int:
    if not arguments.to:
        raise UsageError("archive replay needs --to SUBSCRIPTION: it replays into one only")
    window = _window(arguments, clock)
    body: dict[str, Any] = {
        "subscription": arguments.to,
        "since": float(window["since"]),
        "until": float(window.get("until", clock.now())),
        "dry_run": arguments.dry_run,
        **_filters(arguments),
    }
    if arguments.rate is not None:
        body["rate"] = arguments.rate
    if arguments.replay_id:
        body["replay_id"] = arguments.replay_id
    answer = await ask(arguments, "POST", f"{BASE}/replay", body=body)
    if answer.failed or arguments.detach or answer.document.get("state") != "running":
        return finish(arguments, answer, out, _print_progress)
    path = f"{BASE}/replays/{quote(answer.document['replay_id'], safe='')}"
    try:
        while answer.document.get("state") == "running":
            if not arguments.json:
                out.write(_progress_line(answer.document) + "\n")
                out.flush()
            await asyncio.sleep(POLL_SECONDS)
            answer = await ask(arguments, "GET", path)
            if answer.failed:
                break
    except asyncio.CancelledError:
        # Ctrl-C: the replay stops on the server too, where it is.
        with contextlib.suppress(Exception):
            await asyncio.shield(ask(arguments, "DELETE", path))
        raise
    code = finish(arguments, answer, out, _print_progress)
    return code or _state_code(answer)


def _state_code(answer: Answer) -> int:
    return 0 if answer.document.get("state") == "done" else 1


def _window(arguments: argparse.Namespace, clock: Clock) -> dict[str, str]:
    if arguments.since is None:
        raise UsageError("--since is required: where in the archive to start")
    window = {"since": _time(arguments.since, "--since", clock)}
    if arguments.until is not None:
        window["until"] = _time(arguments.until, "--until", clock)
    return window


def _time(text: str, name: str, clock: Clock) -> str:
    with contextlib.suppress(ValueError):
        return str(float(text))
    with contextlib.suppress(ValueError):
        return str(clock.now() - parse_duration(text))
    try:
        return str(parse_time(text).timestamp())
    except InvalidEventError:
        raise UsageError(
            f"{name}: an RFC 3339 time, Unix seconds, or a duration ago such as 2h"
        ) from None


def _filters(arguments: argparse.Namespace) -> dict[str, str]:
    given = {"type": arguments.type, "source": arguments.source, "subject": arguments.subject}
    for name, value in given.items():
        if value is not None and not value.strip():
            raise UsageError(f"--{name}: give a value")
    return {name: value for name, value in given.items() if value is not None}


def _progress_line(document: dict[str, Any]) -> str:
    line = (
        f"replay {document['replay_id']} into {document['subscription']}: {document['state']}, "
        f"scanned {document['scanned']}, matched {document['matched']}, "
        f"published {document['published']}"
    )
    if document.get("uncertain"):
        uncertain = document["uncertain"]
        line += f"; unconfirmed: {uncertain['id']} (offset {uncertain['offset']})"
    if document.get("error"):
        line += f"; {one_line(document['error'])}"
    return line


def _print_progress(document: dict[str, Any], out: TextIO) -> None:
    out.write(_progress_line(document) + "\n")
    if document.get("state") == "interrupted":
        out.write("  run the same replay again (--replay-id) to resume after the last confirmed\n")


def _print_replays(document: dict[str, Any], out: TextIO) -> None:
    if not document["replays"]:
        out.write("no replays in this process\n")
    out.writelines(_progress_line(replay) + "\n" for replay in document["replays"])


def _print_listing(document: dict[str, Any], out: TextIO) -> None:
    rows = [("OFFSET", "ID", "TYPE", "SOURCE", "SUBJECT", "TIME", "SIZE")]
    rows += [
        (
            str(event["offset"]),
            one_line(event["id"] or "-"),
            one_line(event["type"] or "-"),
            one_line(event["source"] or "-"),
            one_line(event["subject"] or "-"),
            event["time"] or "-",
            str(event["size"]),
        )
        for event in document["events"]
    ]
    if len(rows) > 1:
        print_table(rows, out)
    out.write(f"{len(rows) - 1} events, {document['scanned']} read")
    if not document["complete"]:
        out.write(f"; more: --after-offset {document['next_after_offset']}")
    out.write("\n")


def _print_event(document: dict[str, Any], out: TextIO) -> None:
    for label in ("id", "type", "source", "subject", "time", "size", "offset", "content_type"):
        value = document.get(label)
        out.write(f"{label + ':':<14}{printable('-' if value is None else str(value))}\n")
    headers = orjson.dumps(document["headers"], option=orjson.OPT_INDENT_2).decode()
    out.write(f"headers:\n{indented(headers)}\n")
    label = "data (base64)" if document["data_encoding"] == "base64" else "data"
    out.write(f"{label}:\n{indented(document['data'])}\n")
