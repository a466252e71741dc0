"""`conveyor status`, `subscriptions`, `dlq` and `publish`: talking to a running conveyor.

Human output by default, `--json` for scripts. Exit codes: 0 done, 1 the service answered with
an error (the problem's detail is printed), 2 a usage error (or an invalid event), 3 the service
(or the broker, for `publish --amqp`) could not be reached.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

import aiohttp
import orjson

from producers import EventClient, PublishError, event_from_json
from service.broker_addresses import split_broker_urls

__all__ = ["EXIT_ANSWERED_ERROR", "EXIT_UNREACHABLE", "add_client_commands", "run_client"]

EXIT_ANSWERED_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
DEFAULT_URL = "http://localhost:8080"
_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10)


def add_client_commands(commands: Any, environ: Mapping[str, str]) -> None:
    """Register the client subcommands on the `conveyor` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=environ.get("CONVEYOR_URL", DEFAULT_URL),
        help="the running conveyor (default: $CONVEYOR_URL or %(default)s)",
    )
    common.add_argument(
        "--token",
        default=environ.get("CONVEYOR_TOKEN"),
        help="Bearer token: an API key, or an admin token for admin commands ($CONVEYOR_TOKEN)",
    )
    common.add_argument("--json", action="store_true", help="print the JSON answer as it is")
    status = commands.add_parser(
        "status", parents=[common], help="where an accepted event stands, per subscription"
    )
    status.add_argument("event_id")
    status.add_argument("--source", help="pick one when several sources used this id")
    status.add_argument("--wait", help="wait up to this long for it to finish, e.g. 10s")
    commands.add_parser(
        "subscriptions", parents=[common], help="subscriptions with their queue counts (admin)"
    )
    dlq = commands.add_parser(
        "dlq", parents=[common], help="dead letters of a subscription, or 'unrouted' (admin)"
    )
    dlq.add_argument("action", choices=("ls", "show", "replay", "discard"))
    dlq.add_argument("queue", help="a subscription name, or 'unrouted'")
    dlq.add_argument("entry", nargs="*", help="entry ids (show: one; replay/discard: these)")
    dlq.add_argument("--type", help="only events of this type")
    dlq.add_argument("--error-class", help="only failures of this class")
    dlq.add_argument("--reason", help="only this reason (permanent-error, retries-exhausted...)")
    dlq.add_argument("--since", help="only failures at or after this RFC 3339 time")
    dlq.add_argument("--until", help="only failures before this RFC 3339 time")
    dlq.add_argument("--all", action="store_true", help="replay/discard: every entry")
    dlq.add_argument("--rate", type=_positive, help="replay: at most this many per second")
    dlq.add_argument("--offset", type=int, default=0, help="ls: skip this many matching entries")
    dlq.add_argument("--limit", type=int, default=100, help="ls: show at most this many (500)")
    publish = commands.add_parser(
        "publish",
        parents=[common],
        help="send an event over HTTP (default) or straight to RabbitMQ (--amqp)",
        description="Send an event built from arguments, or the CloudEvent(s) in --file "
        "(one structured event or a batch array).",
    )
    publish.add_argument("type", nargs="?", help="the event type (unless --file)")
    publish.add_argument("--data", help="the data, as JSON")
    publish.add_argument("--source", default="/conveyor-cli")
    publish.add_argument("--id", help="the event id (default: a new UUID)")
    publish.add_argument("--subject")
    publish.add_argument("--file", type=Path, help="a structured CloudEvent or a batch, as JSON")
    publish.add_argument(
        "--amqp",
        action="store_true",
        help="publish to RabbitMQ directly ($CONVEYOR_AMQP_URL, $CONVEYOR_NAMESPACE)",
    )
    publish.set_defaults(
        amqp_url=environ.get("CONVEYOR_AMQP_URL", "amqp://guest:guest@localhost:5672/"),
        namespace=environ.get("CONVEYOR_NAMESPACE", "conveyor"),
    )


async def run_client(arguments: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    if arguments.command == "publish":
        return await publish_command(arguments, out)
    if arguments.command == "dlq":
        return await dlq_command(arguments, out)
    if arguments.command == "status":
        path = f"/v1/events/{quote(arguments.event_id, safe='')}"
        query = {k: v for k, v in (("source", arguments.source), ("wait", arguments.wait)) if v}
        return await _request(arguments, "GET", path, out, _print_status, query=query)
    return await _request(arguments, "GET", "/v1/admin/subscriptions", out, _print_subscriptions)


def _print_status(document: dict[str, Any], out: TextIO) -> None:
    out.write(
        f"{document['id']} (source {document['source']}, type {document['type']}): "
        f"{document['state']}{'' if document['done'] else ', not done yet'}\n"
    )
    for name, entry in document["subscriptions"].items():
        line = f"  {name:<24} {entry['state']:<14} attempts {entry['attempts']}"
        if entry.get("next_attempt_at"):
            line += f"  next attempt {entry['next_attempt_at']}"
        if entry.get("finished_at"):
            line += f"  finished {entry['finished_at']}"
        if entry.get("last_error"):
            error = entry["last_error"]
            line += f"\n  {'':<24} last error: {error['class']}: {error['message']}"
        out.write(line + "\n")


def _print_subscriptions(document: dict[str, Any], out: TextIO) -> None:
    rows = [("NAME", "EVENTS", "READY", "CONSUMERS", "RETRYING", "DEAD", "HANDLER")]
    for entry in document["subscriptions"]:
        queue = entry["queue"]
        rows.append(
            (
                entry["name"],
                ",".join(entry["events"]),
                str(queue.get("messages", "?")),
                str(queue.get("consumers", "?")),
                str(sum(tier.get("messages", 0) for tier in entry["retry"]["tiers"])),
                str(entry["dead_letter"].get("messages", "?")),
                entry["handler"],
            )
        )
    _print_table(rows, out)
    # An ordered subscription's READY and CONSUMERS add up its partitions: each one here.
    partitions = [("SUBSCRIPTION", "KEY", "PARTITION", "READY", "CONSUMERS")]
    for entry in document["subscriptions"]:
        ordering = entry.get("ordering") or {"queues": ()}
        partitions.extend(
            (
                entry["name"],
                ordering["by"],
                queue["name"],
                str(queue.get("messages", "?")),
                str(queue.get("consumers", "?")),
            )
            for queue in ordering["queues"]
        )
    if len(partitions) > 1:
        out.write("\n")
        _print_table(partitions, out)


def _print_table(rows: Sequence[tuple[str, ...]], out: TextIO) -> None:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        out.write("\n")


async def publish_command(arguments: argparse.Namespace, out: TextIO) -> int:
    try:
        documents, batch = _documents(arguments)
        events = [event_from_json(document) for document in documents]
    except (OSError, ValueError) as error:  # InvalidEventError is a ValueError
        _complain(f"{error}")
        return EXIT_USAGE
    if arguments.amqp:
        try:
            addresses = split_broker_urls(arguments.amqp_url)
        except ValueError as error:
            _complain(f"CONVEYOR_AMQP_URL: {error}")
            return EXIT_USAGE
        problem: Exception | None = None
        # Several nodes: the first that takes the connection (nothing is published before).
        for address in addresses:
            try:
                async with EventClient(address, namespace=arguments.namespace) as client:
                    for event in events:
                        await client.publish(event)
            except OSError as error:
                problem = error
                continue
            except PublishError as error:
                problem = error
                break
            out.write("".join(f"{event.id}\n" for event in events))
            return 0
        _complain(f"not published: {problem}")
        return EXIT_UNREACHABLE
    content_type = "application/cloudevents-batch+json" if batch else "application/cloudevents+json"
    body = orjson.dumps(documents if batch else documents[0])
    return await _post(arguments, body, content_type, out)


def _documents(arguments: argparse.Namespace) -> tuple[list[dict[str, Any]], bool]:
    if arguments.file is not None:
        loaded = orjson.loads(arguments.file.read_bytes())
        if isinstance(loaded, list):
            return loaded, True
        return [loaded], False
    if not arguments.type:
        raise ValueError("give an event type, or --file")
    document: dict[str, Any] = {
        "specversion": "1.0",
        "type": arguments.type,
        "source": arguments.source,
        "id": arguments.id or str(uuid.uuid4()),
    }
    if arguments.subject:
        document["subject"] = arguments.subject
    if arguments.data is not None:
        document["data"] = orjson.loads(arguments.data)
        document["datacontenttype"] = "application/json"
    return [document], False


async def _post(arguments: argparse.Namespace, body: bytes, content_type: str, out: TextIO) -> int:
    def render(answer: dict[str, Any], out: TextIO) -> None:
        entries = answer.get("results", [answer])
        out.write("".join(f"{entry['id']} {entry['location']}\n" for entry in entries))

    return await _request(
        arguments, "POST", "/v1/events", out, render, raw_body=body, content_type=content_type
    )


async def dlq_command(arguments: argparse.Namespace, out: TextIO) -> int:
    base = (
        "/v1/admin/unrouted"
        if arguments.queue == "unrouted"
        else f"/v1/admin/subscriptions/{quote(arguments.queue, safe='')}/dead-letters"
    )
    filters = {
        key: value
        for key, value in (
            ("type", arguments.type),
            ("error_class", arguments.error_class),
            ("reason", arguments.reason),
            ("since", arguments.since),
            ("until", arguments.until),
        )
        if value
    }
    match arguments.action:
        case "ls":
            page = {"offset": str(arguments.offset), "limit": str(arguments.limit)}
            return await _request(
                arguments, "GET", base, out, _print_dead_letters, query=filters | page
            )
        case "show":
            if len(arguments.entry) != 1:
                _complain("dlq show takes one entry id")
                return EXIT_USAGE
            path = f"{base}/{quote(arguments.entry[0], safe='')}"
            return await _request(arguments, "GET", path, out, _print_json)
    chosen = [bool(arguments.entry), bool(filters), arguments.all]
    if sum(chosen) != 1:
        _complain("say which entries: ids, filters (--type ...) or --all")
        return EXIT_USAGE
    body: dict[str, Any] = (
        {"ids": arguments.entry}
        if arguments.entry
        else {"filter": filters}
        if filters
        else {"all": True}
    )
    if arguments.action == "replay" and arguments.rate:
        body["rate"] = arguments.rate
    return await _request(
        arguments, "POST", f"{base}/{arguments.action}", out, _print_pass, body=body
    )


async def _request(
    arguments: argparse.Namespace,
    method: str,
    path: str,
    out: TextIO,
    render: Any,
    *,
    query: dict[str, str] | None = None,
    body: Any = None,
    raw_body: bytes | None = None,
    content_type: str | None = None,
) -> int:
    headers = {"Authorization": f"Bearer {arguments.token}"} if arguments.token else {}
    if content_type is not None:
        headers["Content-Type"] = content_type
    try:
        async with (
            # No overall limit: a replay of many dead letters at a low rate takes its time.
            aiohttp.ClientSession(timeout=_TIMEOUT) as session,
            session.request(
                method,
                arguments.url.rstrip("/") + path,
                params=query,
                json=body,
                data=raw_body,
                headers=headers,
            ) as reply,
        ):
            status, raw = reply.status, await reply.read()
    except aiohttp.ClientError as error:
        _complain(f"cannot reach {arguments.url}: {type(error).__name__}: {error}")
        return EXIT_UNREACHABLE
    except TimeoutError:
        _complain(f"no answer from {arguments.url}; what was asked may still be under way")
        return EXIT_ANSWERED_ERROR
    document = _parse(raw)
    if status >= 400:  # noqa: PLR2004 - an error answer
        _complain(f"{status} {document.get('title', '')}: {document.get('detail', '')}")
        return EXIT_ANSWERED_ERROR
    if arguments.json:
        _print_json(document, out)
    else:
        render(document, out)
    return 0


def _parse(raw: bytes) -> dict[str, Any]:
    """The answer as JSON; a proxy's HTML error page becomes a detail line."""
    try:
        document = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return {"detail": raw[:200].decode(errors="replace")}
    return document if isinstance(document, dict) else {"results": document}


def _print_json(document: Any, out: TextIO) -> None:
    out.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")


def _print_pass(document: dict[str, Any], out: TextIO) -> None:
    _print_json(document, out)
    if document.get("skipped"):
        _complain(f"{document['skipped']} entries skipped, still in the queue: see skipped_entries")


def _print_dead_letters(document: dict[str, Any], out: TextIO) -> None:
    out.write(
        f"{document['queue']}: {document['matching']} of {document['messages']} entries"
        f"{' (more than one pass reads)' if document['truncated'] else ''}\n"
    )
    for entry in document["entries"]:
        error = entry["error"]
        out.write(
            f"{entry['id']}  {entry['event']['id']}  {entry['event']['type']}  "
            f"{entry['reason'] or '-'}  {error['class'] or '-'}: {error['message'] or ''}  "
            f"{entry['last_failure'] or ''}\n"
        )
    _print_skipped(document, out)


def _print_skipped(document: dict[str, Any], out: TextIO) -> None:
    """The entries a pass could not handle as asked; they are all still in the queue."""
    skipped = document.get("skipped", 0)
    if not skipped:
        return
    out.write(f"skipped {skipped} (still in the queue):\n")
    out.writelines(
        f"{entry['id']}  {entry['event']['id']}  {entry['why']}\n"
        for entry in document.get("skipped_entries", [])
    )


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be above 0")
    return value


def _complain(text: str) -> None:
    print(f"conveyor: {text}", file=sys.stderr)  # noqa: T201 - a CLI reports on stderr
